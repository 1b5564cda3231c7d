"""Training on KITTI-format data with Lightning: options (config), the LightningModule (module),
the LightningDataModule (datamodule), checkpoint callbacks (callbacks), and ``train`` (run).

Only ``config`` and ``run`` import without Lightning installed; ``train`` says how to install it.
"""

from .config import TrainConfig
from .run import train

__all__ = ["TrainConfig", "train"]
