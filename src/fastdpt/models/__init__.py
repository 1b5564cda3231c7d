from .dpt import DPT

__all__ = ["DPT"]
