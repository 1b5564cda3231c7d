"""fastdpt: online monocular depth estimation with efficient Dense Prediction Transformers."""

from .api import create_model, load
from .config import ModelConfig, Preprocessing
from .errors import FastDPTError
from .models import DPT
from .predict import DepthResult, Predictor
from .presets import get_config, list_models
from .runtime import RuntimeOptions
from .transforms import Transforms
from .weights import save_checkpoint, warm_start

__version__ = "0.1.0"
__all__ = [
    "DPT", "DepthResult", "FastDPTError", "ModelConfig", "Predictor", "Preprocessing", "RuntimeOptions", "Transforms",
    "create_model",
    "get_config", "list_models", "load", "save_checkpoint", "warm_start",
]
