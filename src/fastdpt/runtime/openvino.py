"""The OpenVINO backend (``pip install -e '.[openvino]'``): Intel's CPU runtime, which uses AMX and
AVX-512 BF16/VNNI where the processor has them (and is fast on AMD too).

A torch model is converted per network input size through the ONNX export (a temporary file);
an ``.xml`` (OpenVINO IR from ``fastdpt export --format openvino``) or ``.onnx`` file is read as it
is, with its fixed input size. Precisions: fp32; bf16 (``INFERENCE_PRECISION_HINT``, only where the
CPU runs bf16 natively); int8 (post-training quantisation with NNCF on calibration frames, as the ONNX
Runtime int8 path takes them). Compiled once per input shape, for latency, on ``threads`` threads; a
batch of frames runs as requests in flight together on a throughput-mode model (one stream a thread),
compiled on the first batch.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Hashable

import numpy as np
import torch

from ..config import CONFIG_KEY, ModelConfig
from ..errors import ConfigError, ExportError
from ..models.structure import STRUCTURE_KEY, dump_structure, parse_structure
from .backends import Backend, Calibration, register

RT_INFO = ["fastdpt", CONFIG_KEY.replace(".", "_")]  # where the canonical name travels in an IR file
STRUCTURE_RT_INFO = ["fastdpt", STRUCTURE_KEY.replace(".", "_")]  # and a pruned model's shapes (JSON)
WEIGHTS_RT_INFO = ["fastdpt", "weights_sha256"]  # and the sha256 of its .bin, checked when the file is opened


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("the openvino backend needs OpenVINO: pip install -e '.[openvino]'") from None
    return ov


@functools.cache
def core():
    """The process's one OpenVINO ``Core``, made on first use and kept until the process ends.

    OpenVINO's CPU plugin, created once per ``Core``, installs an alternate signal stack on the thread
    that first uses it and puts back the one it found when that ``Core`` is destroyed (its AMX signal
    stack set-up). Two Cores destroyed in the order they were made leave the thread's signal stack
    pointing at memory already freed, and the next signal handled on it (Python's Ctrl-C handler runs
    there) kills the process with a segmentation fault (OpenVINO 2026.4; a distillation report that held
    two predictors crashed a later Ctrl-C in the same process). One Core for every backend, model read
    and capability query (OpenVINO's own advice) has one plugin, never destroyed while Python runs."""
    return _ov().Core()


def ov_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def convert(model: torch.nn.Module, size: tuple[int, int]):
    """An OpenVINO model of ``model`` for (1, 3, h, w) input, carrying the canonical name. Through the
    project's ONNX export (a temporary file, removed at once): OpenVINO's direct PyTorch conversion
    traces the ResNet-50 variants into a graph its CPU plugin crashes on (2026.4), the ONNX one runs."""
    import tempfile

    from .export import export_onnx

    ov = _ov()
    with tempfile.TemporaryDirectory(prefix="fastdpt-ov-") as tmp:
        path = export_onnx(model.float().eval(), Path(tmp) / "model.onnx", tuple(size))
        om = core().read_model(str(path))
        stamp(om, model)
        return ov.clone_model(om) if hasattr(ov, "clone_model") else om


def stamp(om, model: torch.nn.Module) -> None:
    """Write the canonical name, and a pruned model's structure, into an OpenVINO model's rt_info."""
    om.set_rt_info(model.config.name, RT_INFO)
    if structure := getattr(model, "structure", None):
        om.set_rt_info(dump_structure(structure), STRUCTURE_RT_INFO)


def ir_config(path: str | os.PathLike) -> ModelConfig:
    """The variant an OpenVINO IR (``.xml``) or ONNX file exported by fastdpt was made from."""
    path = Path(path)
    if path.suffix == ".onnx":
        from .export import onnx_config

        return onnx_config(path)
    if not path.is_file():
        raise ExportError(f"OpenVINO model not found: {path}")
    name = _ir_info(*_identity(path))[0]
    if name is None:
        raise ExportError(f"{path} is not an OpenVINO model exported by fastdpt (no fastdpt name in its runtime info)")
    return ModelConfig.from_name(name)


def _identity(path: Path) -> tuple[str, int, int, int, int]:
    """A file (and its .bin) as the cache below knows it: rewritten in place (new mtime or size), it is read again."""
    st = path.stat()
    binary = path.with_suffix(".bin")
    sb = binary.stat() if binary.is_file() else None
    return str(path.resolve()), st.st_mtime_ns, st.st_size, sb.st_mtime_ns if sb else 0, sb.st_size if sb else 0


@functools.lru_cache(maxsize=32)
def _ir_info(path: str, mtime_ns: int, size: int, bin_mtime_ns: int = 0, bin_size: int = 0) -> tuple[str | None, str | None, bool]:
    """One read of an IR file for what fastdpt asks of it: its variant's name, its pruned structure's
    JSON, whether it is int8 (``bench`` of an ``.xml`` asked all three, each a full read of the
    graph: about a second each for a DPT-Hybrid IR). Only these small values are kept, not the graph."""
    try:
        om = core().read_model(path)
    except RuntimeError as e:
        raise ExportError(f"{path} is not an OpenVINO model exported by fastdpt ({str(e).splitlines()[0][:120]})") from None
    if om.has_rt_info(WEIGHTS_RT_INFO):  # an export recorded its weights' digest: they must still be those
        import hashlib

        if hashlib.sha256(Path(path).with_suffix(".bin").read_bytes()).hexdigest() != om.get_rt_info(WEIGHTS_RT_INFO).astype(str):
            raise ExportError(f"{path}: its weights (.bin) are not the ones it was exported with (damaged or changed "
                              "since); export it again with `fastdpt export`")
    name = om.get_rt_info(RT_INFO).astype(str) if om.has_rt_info(RT_INFO) else None
    structure = om.get_rt_info(STRUCTURE_RT_INFO).astype(str) if om.has_rt_info(STRUCTURE_RT_INFO) else None
    quantised = any(op.get_type_name() in ("FakeQuantize", "FakeConvert") or
                    (op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4"))
                    for op in om.get_ops())
    return name, structure, quantised


def ir_structure(path: str | os.PathLike) -> dict:
    """The pruned structure an exported file (``.xml`` or ``.onnx``) records; ``{}`` for an unpruned one."""
    path = Path(path)
    if path.suffix == ".onnx":
        from .export import onnx_metadata

        text = onnx_metadata(path).get(STRUCTURE_KEY)
    else:
        text = _ir_info(*_identity(path))[1]
    return parse_structure(text, source=str(path))


QUANTISED_ONNX_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}


def ir_quantised(path: str | os.PathLike) -> bool:
    """Whether an exported file (``.xml`` or ``.onnx``) is already int8: quantise / fake-quantise nodes or
    8-bit weights (NNCF's and ONNX Runtime's int8 models, ``fastdpt compress --qat``)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return any(n.op_type in QUANTISED_ONNX_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)
    return _ir_info(*_identity(path))[2]


def save_ir(model: torch.nn.Module, path: str | os.PathLike, size: tuple[int, int] | None = None) -> Path:
    """``fastdpt export --format openvino``: ``path`` (.xml) and its .bin, fp32 weights."""
    path = Path(path)
    if path.suffix != ".xml":
        raise ExportError(f"an OpenVINO model is written as .xml (+ .bin), got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(convert(model, size or model.config.input_size), path)


def save(om, path: str | os.PathLike) -> Path:
    """Write an OpenVINO model (``.xml`` + ``.bin``, weights as they are) with the sha256 of its ``.bin``
    in the ``.xml``'s runtime info, where :func:`ir_config` checks it on every open."""
    import hashlib
    import xml.etree.ElementTree as ET

    from ..io import atomic_write

    path = Path(path)
    _ov().save_model(om, str(path), compress_to_fp16=False)
    digest = hashlib.sha256(path.with_suffix(".bin").read_bytes()).hexdigest()
    tree = ET.parse(path)
    info = tree.getroot().find("rt_info")
    if info is None:
        info = ET.SubElement(tree.getroot(), "rt_info")
    group = info.find(WEIGHTS_RT_INFO[0])
    if group is None:
        group = ET.SubElement(info, WEIGHTS_RT_INFO[0])
    ET.SubElement(group, WEIGHTS_RT_INFO[1], value=digest)
    atomic_write(path, lambda p: tree.write(p, encoding="utf-8", xml_declaration=True))
    return path


@register
class OpenVinoBackend(Backend):
    """OpenVINO on the CPU: a compiled model per network input size (see the module docstring)."""

    name = "openvino"
    precisions = ("fp32", "bf16", "int8")
    extra = "openvino"
    batches = True  # a batch runs as requests in flight on a throughput-mode model
    reads = (".onnx", ".xml")
    preference = 0

    @classmethod
    def open(cls, path, options):
        return cls(None, options.precision, path=path, threads=options.threads)

    @classmethod
    def missing(cls, device: str = "cpu") -> str | None:
        if not device.startswith("cpu"):
            return "the CPU (--device cpu): fastdpt runs OpenVINO on CPUs"
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "OpenVINO (pip install -e '.[openvino]')"
        return None

    @classmethod
    def create(cls, model, options, calibration=None):
        return cls(model, options.precision, threads=options.threads, calibration=calibration)

    def __init__(self, model: torch.nn.Module | None, precision: str = "fp32", path: str | os.PathLike | None = None,
                 threads: int | None = None, calibration: Calibration | None = None) -> None:
        super().__init__(torch.device("cpu"))
        self.ov = _ov()
        if precision not in self.precisions:
            raise ConfigError(f"the openvino backend runs {', '.join(self.precisions)}, not {precision}")
        if precision == "bf16" and not ov_bf16():
            from .cpu import matrix_features

            raise ConfigError("bf16 is not native on this CPU (OpenVINO reports no BF16; it needs AMX or AVX512-BF16, "
                              f"found: {', '.join(matrix_features()) or 'none'}); use --precision auto or fp32")
        if precision == "int8" and calibration is None and path is None:
            raise ConfigError("int8 needs calibration inputs (representative frames); pass calibration=")
        try:
            import nncf  # noqa: F401
        except ImportError:
            if precision == "int8":
                raise ConfigError("OpenVINO int8 needs NNCF: pip install -e '.[openvino]'") from None
        self.model, self.precision, self.threads, self.calibration = model, precision, threads, calibration
        self.core = core()
        self.fixed_size: tuple[int, int] | None = None
        if path is not None:
            om = self.core.read_model(str(path))
            shape = om.inputs[0].get_partial_shape()
            if shape.is_dynamic:
                raise ConfigError(f"{path} has a dynamic input shape; export it with a fixed size")
            self.fixed_size = (int(shape[2].get_length()), int(shape[3].get_length()))
            self._runners[self.fixed_size] = self._run_fn(om, functools.partial(self.core.read_model, str(path)))

    def key(self, shape: torch.Size) -> Hashable:
        return tuple(int(s) for s in shape[-2:])

    def streams(self) -> int:
        """Requests a batch runs at once: one a thread (1: every frame of a batch in turn)."""
        return int(self.threads or len(os.sched_getaffinity(0)))

    def _compile(self, om, throughput: bool = False):
        """Latency mode (one request on every thread: what one frame at a time needs), or throughput
        mode for batches (``streams()`` requests of one thread each, in flight together: 34 vs 27 frames
        a second for the fast preset's network on 2 AMX cores, ``benchmarks/video_pipeline.py``)."""
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY"}
        if throughput:  # on threads threads, or all of the process's CPUs (OpenVINO's default)
            config["NUM_STREAMS"] = self.streams()
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
            if self.threads < len(os.sched_getaffinity(0)):
                # fewer threads than this process may use: other processes share the machine (Ray labelling
                # actors, study trials, several services), and OpenVINO's default pinning puts every such
                # process's threads on the same first cores (two 1-thread processes on 2 cores ran at half
                # speed each); unpinned, the OS spreads them
                config["ENABLE_CPU_PINNING"] = False
        return self.core.compile_model(om, "CPU", config)

    def build(self, shape: torch.Size):
        size = self.key(shape)
        if self.model is None:
            raise ConfigError(f"this OpenVINO model takes {self.fixed_size[0]}x{self.fixed_size[1]} input, "
                              f"not {size[0]}x{size[1]}")
        om = convert(self.model, size)
        again = functools.partial(convert, self.model, size)
        if self.precision == "int8":
            import nncf

            calib = [x.detach().cpu().numpy().astype(np.float32) for x in self.calibration(size)]
            om = nncf.quantize(om, nncf.Dataset(calib), subset_size=len(calib))

            def again():  # calibrating again would cost more than holding the int8 graph
                return om
        return self._run_fn(om, again)

    def _run_fn(self, om, again):
        """One frame: the latency-mode request. A batch (``stream --batch``, ``predict_many``): its frames
        as requests of the throughput-mode model, in flight together (graphs take batch 1); the same
        depth. Each model is compiled when first needed: the first from ``om``, the other from ``again()``
        (the graph read or converted once more: holding the float graph for it would keep a second copy
        of the weights in memory). A single frame after batches only (a batch's remainder, the last
        frames labelled) takes a throughput-mode request rather than a conversion and compile of its own."""
        graph = [om]  # the graph made for the first compile, dropped by it
        request = queue = None  # the latency-mode request and the throughput model's requests, once built

        def source():
            return graph.pop() if graph else again()

        def run(x: torch.Tensor) -> torch.Tensor:
            nonlocal request, queue
            xs = x.detach().cpu().numpy().astype(np.float32)
            if (len(xs) == 1 and (request is not None or queue is None)) or self.streams() == 1:
                if request is None:
                    request = self._compile(source()).create_infer_request()
                return torch.from_numpy(np.concatenate([np.array(request.infer({0: xs[i:i + 1]})[0])
                                                        for i in range(len(xs))]))
            if queue is None:
                compiled = self._compile(source(), throughput=True)
                queue = self.ov.AsyncInferQueue(compiled, int(compiled.get_property("NUM_STREAMS")))
            outs = [None] * len(xs)
            queue.set_callback(lambda req, i: outs.__setitem__(i, np.array(req.get_output_tensor(0).data)))
            for i in range(len(xs)):
                queue.start_async({0: xs[i:i + 1]}, i)
            queue.wait_all()
            return torch.from_numpy(np.concatenate(outs))

        return run
