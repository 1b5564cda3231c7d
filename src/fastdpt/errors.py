"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class FastDPTError(Exception):
    """Base class for every error fastdpt raises on bad input."""


class ConfigError(FastDPTError, ValueError):
    """An invalid variant description or an unknown model name."""


class WeightsError(FastDPTError):
    """A weight file that is missing, corrupt or does not fit the model."""


class WeightsNotFoundError(WeightsError):
    """Weights were asked for but are neither given, cached, nor downloadable."""


class ImageError(FastDPTError):
    """An image that cannot be read or is too large."""
