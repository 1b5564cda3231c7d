"""Training on KITTI-format data with Lightning: options (config), the LightningModule (module),
the LightningDataModule (datamodule), checkpoint callbacks (callbacks), and ``train`` (run).

Only ``config`` and ``run`` import without Lightning installed; ``train`` says how to install it.
"""

from .._lazy import lazy_attributes
from .config import TrainConfig

__getattr__ = lazy_attributes(__name__, {"train": ".run"})  # Lightning loads when training starts

__all__ = ["TrainConfig", "train"]
