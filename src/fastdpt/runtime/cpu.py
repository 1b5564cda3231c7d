"""What the processor can do, and the ``auto`` choice of backend and precision that follows from it.

x86 matrix features (``/proc/cpuinfo`` flags): AMX (``amx_bf16``, ``amx_int8``: Xeon since Sapphire
Rapids), AVX-512 BF16 / VNNI (recent Xeons, AMD Zen 4/5), AVX-VNNI, AVX2. bf16 is *native* with
``amx_bf16`` or ``avx512_bf16`` (elsewhere it is emulated: measured ~500x slower than fp32 through
torch on an AMD EPYC without it); int8 is native with ``amx_int8``, ``avx512_vnni`` or ``avx_vnni``.

The choice table (:func:`choose`), first match wins:

====================================  =========================  ===========================================
machine                               backend / precision        why
====================================  =========================  ===========================================
CUDA device                           cudagraph / bf16 (fp16)    the GPU runtime: one graph launch a frame
CPU, native bf16, OpenVINO            openvino / bf16            bf16 matrix units, accuracy of bf16 weights
CPU, native int8 only, OpenVINO,      openvino / int8            VNNI int8 units; calibrated, near-lossless
calibration frames
CPU, OpenVINO                         openvino / fp32            its CPU kernels beat torch eager
CPU, ONNX Runtime                     onnxruntime / fp32         graph-optimised fp32
CPU, native bf16                      torch / bf16               oneDNN bf16 (weights cast once)
CPU                                   torch / fp32               always there
====================================  =========================  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

MATRIX_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The flags of this machine's first processor (empty where ``/proc/cpuinfo`` is not there)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def matrix_features(flags: frozenset[str] | set[str] | None = None) -> list[str]:
    """The matrix-relevant flags present, in :data:`MATRIX_FLAGS` order."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in MATRIX_FLAGS if f in flags]


def native_bf16(flags=None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return "amx_bf16" in flags or "avx512_bf16" in flags


def native_int8(flags=None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_int8", "avx512_vnni", "avx_vnni"} & set(flags))


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str
    why: str

    def line(self) -> str:
        return f"auto: {self.backend} {self.precision} ({self.why})"


def choose(device: str = "cpu", flags=None, available: set[str] | frozenset[str] = frozenset({"torch"}),
           calibration: bool = False, cuda_bf16: bool = True) -> Choice:
    """The backend and precision ``auto`` runs (see the module's table). ``available``: backends whose
    libraries are installed; ``calibration``: representative frames are at hand (for int8)."""
    if device.startswith("cuda"):
        return Choice("cudagraph", "bf16" if cuda_bf16 else "fp16", "a CUDA GPU: bf16/fp16 weights replayed as CUDA graphs")
    flags = cpu_flags() if flags is None else flags
    feats = ", ".join(matrix_features(flags)) or "no AVX2"
    if "openvino" in available:
        if native_bf16(flags):
            return Choice("openvino", "bf16", f"native bf16 on this CPU ({feats})")
        if native_int8(flags) and calibration:
            return Choice("openvino", "int8", f"native int8 but no bf16 on this CPU ({feats})")
        return Choice("openvino", "fp32", f"no native bf16 on this CPU ({feats}): OpenVINO fp32")
    if "onnxruntime" in available:
        return Choice("onnxruntime", "fp32", f"OpenVINO not installed (pip install -e '.[openvino]'); {feats}")
    if native_bf16(flags):
        return Choice("torch", "bf16", f"native bf16 on this CPU ({feats}); no OpenVINO or ONNX Runtime installed")
    return Choice("torch", "fp32", f"{feats}; no OpenVINO or ONNX Runtime installed")
