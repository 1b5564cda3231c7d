"""Every error a user can cause, in one place. The CLI prints their message on one line and exits
non-zero; the HTTP service answers them as JSON. Nothing else lives here."""


class FastDPTError(Exception):
    """Base class for every error fastdpt raises on bad input."""


class ConfigError(FastDPTError, ValueError):
    """An invalid variant description, an unknown model name, or a bad option."""


class WeightsError(FastDPTError):
    """A weight file that is missing, corrupt or does not fit the model."""


class WeightsNotFoundError(WeightsError):
    """Weights were asked for but are neither given, cached, nor downloadable."""


class ImageError(FastDPTError, ValueError):
    """An image that cannot be read, is too large, or has the wrong shape."""


class ImageTooLargeError(ImageError):
    """An image with more pixels than the limit (checked before decoding)."""


class DataError(FastDPTError):
    """Missing or malformed dataset files and split lists."""


class StreamError(FastDPTError):
    """A video, camera or image sequence that cannot be read or written."""


class ExportError(FastDPTError):
    """An export (ONNX, int8) that cannot be written or read back."""


class TrainingError(FastDPTError):
    """A training run that cannot start or continue."""


class NonFiniteLossError(TrainingError):
    """The training loss became inf or nan."""


class ClusterError(FastDPTError):
    """A Ray cluster that cannot be reached or started."""


class LabelError(FastDPTError):
    """A label folder that cannot be used as asked (another teacher's labels, another run)."""


class DistillError(FastDPTError):
    """A distillation that cannot run as asked."""


class DiskFullError(FastDPTError, OSError):
    """A file could not be written for lack of space (nothing half-written is left under its name)."""


class CompressError(FastDPTError):
    """A compression (pruning, quantisation-aware training, clustering) that cannot be done as asked."""
