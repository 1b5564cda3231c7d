"""Compression on the speed/accuracy frontier: structured pruning (Torch-Pruning), weight clustering,
recovery by distillation or training, and ``compress`` (the whole job behind ``fastdpt compress``)."""

from .._lazy import lazy_attributes
from ..errors import CompressError
from .config import CompressConfig

# torch, Torch-Pruning and scikit-learn load on first use
__getattr__ = lazy_attributes(__name__, {
    "compress": ".run", "PruneSpec": ".prune", "prune": ".prune", "cluster": ".cluster",
})

__all__ = ["CompressConfig", "CompressError", "PruneSpec", "cluster", "compress", "prune"]
