"""int8 ONNX models: static QDQ calibrated on inputs the caller provides, or dynamic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .export import stamp

CALIBRATION_FRAMES = 8


def default_calibration(count: int = CALIBRATION_FRAMES) -> list[np.ndarray]:
    """The frames int8 is calibrated on when the caller gives none (the command line, ``bench``,
    ``export --int8``): synthetic driving frames at KITTI size, declared here once."""
    from ..data.synthetic import sample_frames

    return sample_frames(count)


def calibration_for(options, exported: bool = False) -> list[np.ndarray] | None:
    """The calibration frames a run with these :class:`~fastdpt.runtime.RuntimeOptions` needs: the
    default ones when its precision is int8 (given, or chosen by ``auto``), None otherwise and for
    exported files (they carry their own quantisation). Every command asks here."""
    if exported:
        return None
    resolved, _ = options.resolve(calibration=True)
    return default_calibration() if resolved.precision == "int8" else None


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, method: str = "static",
                  calibration: list[np.ndarray] | None = None) -> Path:
    """int8 ONNX model, keeping the metadata.

    ``static`` (default): QDQ, per-channel int8 weights and uint8 activations, calibrated on
    ``calibration`` (normalised network inputs (1, 3, h, w) at the model's size: representative
    frames, e.g. :func:`fastdpt.data.synthetic.sample_frames` through the variant's transforms; a
    noise image widens the activation ranges so much that a trained model's depth is ruined).
    Convolutions and matmuls then run as int8 kernels. ``dynamic``: int8 MatMul/Gemm weights,
    activations quantised on the fly (no calibration; slower on CPUs at these sizes).
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in ("static", "dynamic"):
        raise ConfigError(f"int8 method must be 'static' or 'dynamic', got {method!r}")
    if method == "static" and not calibration:
        raise ConfigError("static int8 quantisation needs calibration inputs (representative frames)")
    src, dst = Path(src), Path(dst)
    proto = onnx.load(str(src), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    input_name = proto.graph.input[0].name
    tmp = dst.with_name(f".{dst.name}.part")
    pre = dst.with_name(f".{dst.name}.pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8)
        else:
            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter([{input_name: np.asarray(x, np.float32)} for x in calibration])

                def get_next(self):
                    return next(self.items, None)

            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out = onnx.load(str(tmp))
        stamp(out, {**meta, "fastdpt.int8": method})  # the digest of the int8 weights, not the float file's
        onnx.save(out, str(tmp))
        os.replace(tmp, dst)
    finally:
        for p in (tmp, pre):
            if p.exists():
                p.unlink()
    return dst
