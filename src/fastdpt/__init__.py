"""fastdpt: online monocular depth estimation with efficient Dense Prediction Transformers."""

from ._lazy import lazy_attributes
from .config import ModelConfig, Preprocessing
from .errors import FastDPTError
from .presets import get_config, list_models

# torch, timm and the runtimes load on first use of these
__getattr__ = lazy_attributes(__name__, {
    "create_model": ".api", "load": ".api", "DPT": ".models", "DepthResult": ".predict", "Predictor": ".predict",
    "RuntimeOptions": ".runtime", "Transforms": ".transforms", "save_checkpoint": ".weights", "warm_start": ".weights",
})

__version__ = "0.1.0"
__all__ = [
    "DPT", "DepthResult", "FastDPTError", "ModelConfig", "Predictor", "Preprocessing", "RuntimeOptions", "Transforms",
    "create_model",
    "get_config", "list_models", "load", "save_checkpoint", "warm_start",
]
