"""Backends in one registry: torch eager, torch.compile, CUDA graphs, ONNX Runtime (fp32 / int8) and
OpenVINO (fp32 / bf16 / int8, :mod:`.openvino`), sharing one per-shape cache.

A backend is one class here (or in its own module) decorated with :func:`register`, declaring what it
can do: its ``name``, the ``precisions`` it runs, the pip ``extra`` it needs, whether it runs a batch of
frames as one call (``batches``), the exported files it opens as they are (``reads``, with
:meth:`Backend.open`), its place when ``auto`` looks for a backend that runs a given precision
(``preference``), whether ``bench --backend all`` times it (``in_bench_all``), :meth:`Backend.missing`
(what this machine lacks to run it) and :meth:`Backend.create` (from a model and
:class:`~.options.RuntimeOptions`). ``options``, ``exported``, ``bench`` and ``auto`` read these; adding a
backend is its class and its test (``tests/test_runtime.py`` registers a toy one)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import ConfigError, FastDPTError, WeightsError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
REGISTRY: dict[str, type["Backend"]] = {}


def register(cls: type["Backend"]) -> type["Backend"]:
    """Add a backend class to the registry (under ``cls.name``)."""
    REGISTRY[cls.name] = cls
    return cls


def available_backends(device: str = "cpu") -> set[str]:
    """Registered backends whose libraries are installed and that can run on ``device``."""
    return {name for name, cls in REGISTRY.items() if cls.missing(device) is None}


def by_preference() -> list[str]:
    """The backends ``auto`` may pick, most preferred first (each class's ``preference``)."""
    return sorted((n for n, c in REGISTRY.items() if c.preference is not None), key=lambda n: REGISTRY[n].preference)


def readers(path: str | os.PathLike) -> tuple[str, ...]:
    """The backends that open an exported file as it is (by its suffix), most preferred first."""
    suffix = Path(str(path)).suffix
    return tuple(n for n in by_preference() + [n for n in REGISTRY if REGISTRY[n].preference is None]
                 if suffix in REGISTRY[n].reads)

# calibration for int8: network size (h, w) -> normalised inputs (1, 3, h, w) at that size
Calibration = Callable[[tuple[int, int]], list[torch.Tensor]]


class Backend:
    """Base: ``__call__(x)`` runs the runner cached for ``key(x.shape)``, building it on first use.

    The cache is shared by every thread that calls the backend (building is serialised by a lock).
    Subclasses set ``name``, ``precisions`` and ``extra`` and implement ``create`` and ``build``.
    """

    name = "?"
    precisions: tuple[str, ...] = ("fp32",)
    extra: str | None = None  # the pip extra that installs what it needs
    batches = True  # runs a batch of frames as one call (bench's throughput at --batch-size; else batch 1)
    reads: tuple[str, ...] = ()  # exported file suffixes it opens as they are (see :meth:`open`)
    preference: int | None = None  # place when auto looks for a backend running a precision (lower first; None: never)
    in_bench_all = True  # timed by ``bench --backend all``

    @classmethod
    def open(cls, path: str | os.PathLike, options) -> "Backend":
        """A backend running an exported file (one of ``reads``) as it is."""
        raise ConfigError(f"the {cls.name} backend does not open exported files")

    @classmethod
    def missing(cls, device: str = "cpu") -> str | None:
        """What this machine lacks to run the backend on ``device`` (None: nothing)."""
        return None

    @classmethod
    def create(cls, model: torch.nn.Module, options, calibration: "Calibration | None" = None) -> "Backend":
        raise NotImplementedError

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._runners: dict[Hashable, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._lock = threading.Lock()

    def key(self, shape: torch.Size) -> Hashable:
        return tuple(shape)

    def streams(self) -> int:
        """Frames this backend runs together to better its throughput (1: a batch gains nothing measured
        over frames in turn); offline video takes this many at a time unless told (``--batch``)."""
        return 1

    def build(self, shape: torch.Size) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def runner(self, shape: torch.Size) -> Callable[[torch.Tensor], torch.Tensor]:
        k = self.key(shape)
        with self._lock:
            if k not in self._runners:
                self._runners[k] = self.build(shape)
            return self._runners[k]

    @property
    def cached_shapes(self) -> list:
        return list(self._runners)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x.shape)(x)

    def close(self) -> None:
        self._runners.clear()


NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cast_for_inference(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` with its weights in ``dtype`` (cast once), normalisation layers kept in
    float32: their input is cast up and their output back, so statistics never lose precision."""
    import copy

    model = copy.deepcopy(model).to(dtype)
    for m in model.modules():
        if isinstance(m, NORMS):
            m.float()
            m.register_forward_pre_hook(lambda mod, args: tuple(a.float() if torch.is_tensor(a) else a for a in args))
            m.register_forward_hook(lambda mod, args, out: out.to(dtype))
    return model


def prepare(model: torch.nn.Module, device: torch.device, precision: str, channels_last: bool = False):
    """The model a torch backend runs, and the dtype its input takes. fp16/bf16: weights cast once,
    norms in float32 (GPUs; bf16 also on CPUs with native bf16: AMX or AVX-512 BF16, through oneDNN);
    tf32: fp32 weights with TensorFloat-32 matmuls and convolutions (a process-wide PyTorch setting,
    on GPUs that have it)."""
    from .cpu import matrix_features, native_bf16

    if precision == "int8":
        raise ConfigError("int8 runs through OpenVINO or ONNX Runtime: --backend openvino (or onnxruntime) "
                          "--precision int8")
    if device.type == "cpu" and precision in ("fp16", "tf32"):
        raise ConfigError(f"{precision} is a GPU precision: torch on a CPU has no fast {precision} path; use "
                          "--precision auto, bf16 (on a CPU with AMX or AVX512-BF16) or fp32")
    if device.type == "cpu" and precision == "bf16" and not native_bf16():
        have = ", ".join(matrix_features()) or "none"
        raise ConfigError(f"bf16 on this CPU is emulated and far slower than fp32 (it lacks AMX / AVX512-BF16; "
                          f"matrix features: {have}); use --precision auto or fp32")
    model = model.to(device).eval()
    dtype = HALF.get(precision, torch.float32)
    if precision in HALF:
        model = cast_for_inference(model, dtype)
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, dtype


@register
class TorchBackend(Backend):
    """Eager PyTorch (one runner for every shape), or ``torch.compile`` (one compiled graph per
    input shape; ``compile_mode`` e.g. ``reduce-overhead`` for CUDA graphs inside compile)."""

    name = "torch"
    precisions = ("fp32", "tf32", "fp16", "bf16")
    preference = 2

    @classmethod
    def create(cls, model, options, calibration=None):
        return cls(model, torch.device(options.device), options.precision, compile=cls.name == "compile",
                   channels_last=options.channels_last, compile_mode=options.compile_mode)

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32", compile: bool = False,
                 channels_last: bool = False, compile_mode: str | None = None):
        super().__init__(device)
        self.model, self.dtype = prepare(model, device, precision, channels_last)
        self.compile, self.compile_mode, self.channels_last = compile, compile_mode, channels_last

    def key(self, shape: torch.Size) -> Hashable:
        return tuple(shape) if self.compile else None

    def build(self, shape: torch.Size):
        fn = torch.compile(self.model, dynamic=False, mode=self.compile_mode) if self.compile else self.model
        device, dtype = self.device, self.dtype
        memory = torch.channels_last if self.channels_last else torch.contiguous_format

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return fn(x.to(device, dtype).contiguous(memory_format=memory)).float()

        return run


@register
class CompileBackend(TorchBackend):
    """``torch.compile``: one compiled graph per input shape."""

    name = "compile"
    preference = None  # compiling takes minutes a variant on a CPU: asked for by name only
    in_bench_all = False


@register
class CudaGraphBackend(Backend):
    """CUDA graphs: per input shape, the forward pass is captured once (after warm-up on a side
    stream) into a graph with static input and output buffers and replayed for every frame, so a
    frame costs one graph launch instead of hundreds of kernel launches. Each backend has its own
    memory pool; calls are serialised by the Predictor's lock."""

    name = "cudagraph"
    precisions = ("fp32", "tf32", "fp16", "bf16")
    preference = 3

    @classmethod
    def missing(cls, device: str = "cpu") -> str | None:
        return None if device.startswith("cuda") and torch.cuda.is_available() else "a CUDA device (--device cuda)"

    @classmethod
    def create(cls, model, options, calibration=None):
        return cls(model, torch.device(options.device), options.precision, channels_last=options.channels_last)

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False, warmup: int = 3):
        super().__init__(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ConfigError("the cudagraph backend needs a CUDA device (--device cuda)")
        self.model, self.dtype = prepare(model, device, precision, channels_last)
        self.memory = torch.channels_last if channels_last else torch.contiguous_format
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()

    def build(self, shape: torch.Size):
        static_in = torch.zeros(tuple(shape), device=self.device, dtype=self.dtype).contiguous(memory_format=self.memory)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(self.warmup):
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
            static_out = self.model(static_in).float()

        def run(x: torch.Tensor) -> torch.Tensor:
            static_in.copy_(x)
            graph.replay()
            return static_out.clone()

        return run


@register
class OrtBackend(Backend):
    """ONNX Runtime sessions: over an exported file (its fixed input size), or exported from a torch
    model per network input size into a private temporary folder that is removed with the backend.

    int8 needs ``calibration`` (static QDQ quantisation calibrated on representative inputs)."""

    name = "onnxruntime"
    precisions = ("fp32", "int8")
    extra = "onnx"
    batches = False  # its graphs are exported for one frame
    reads = (".onnx",)
    preference = 1

    @classmethod
    def open(cls, path, options):
        return cls(None, torch.device(options.device), options.precision, onnx_path=path, threads=options.threads)

    @classmethod
    def missing(cls, device: str = "cpu") -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "ONNX Runtime (pip install -e '.[onnx]')"
        return None

    @classmethod
    def create(cls, model, options, calibration=None):
        return cls(model, torch.device(options.device), options.precision, threads=options.threads,
                   calibration=calibration)

    def __init__(self, model: torch.nn.Module | None, device: torch.device, precision: str = "fp32",
                 onnx_path: str | os.PathLike | None = None, threads: int | None = None,
                 calibration: Calibration | None = None):
        super().__init__(device)
        try:
            import onnxruntime as ort
        except ImportError:
            raise FastDPTError("the onnxruntime backend needs `pip install -e '.[onnx]'`") from None
        if precision in ("fp16", "bf16", "tf32"):
            raise ConfigError("the onnxruntime backend runs fp32 or int8 (quantised) models")
        if precision == "int8" and onnx_path is None and calibration is None:
            raise ConfigError("int8 export needs calibration inputs (representative frames); pass calibration=")
        self.ort = ort
        self.model = model
        self.precision = precision
        self.threads = threads
        self.calibration = calibration
        self._tmp: str | None = None
        self.fixed_size: tuple[int, int] | None = None
        if onnx_path is not None:
            sess = self._session(Path(onnx_path))
            shape = sess.get_inputs()[0].shape
            self.fixed_size = (int(shape[2]), int(shape[3]))
            self._runners[self.fixed_size] = self._run_fn(sess)

    def key(self, shape: torch.Size) -> Hashable:
        return tuple(int(s) for s in shape[-2:])

    def _providers(self) -> list[str]:
        available = self.ort.get_available_providers()
        if self.device.type == "cuda":
            return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
                    if p in available]
        return ["CPUExecutionProvider"]

    def _session(self, path: Path):
        opts = self.ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return self.ort.InferenceSession(str(path), opts, providers=self._providers())
        except Exception as e:  # noqa: BLE001 - a hostile or damaged graph (external data outside its folder ...)
            raise WeightsError(f"ONNX Runtime cannot load {path}: {_first_line(e)}") from None

    def _workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="fastdpt-onnx-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
        return Path(self._tmp)

    def build(self, shape: torch.Size):
        from .export import export_onnx
        from .quantize import quantize_int8

        size = self.key(shape)
        if self.model is None:
            raise ConfigError(f"this ONNX model takes {self.fixed_size[0]}x{self.fixed_size[1]} input, not {size[0]}x{size[1]}")
        cfg: ModelConfig = self.model.config
        path = export_onnx(self.model, self._workdir() / f"{cfg.name}-{size[0]}x{size[1]}.onnx", size)
        if self.precision == "int8":
            calib = [x.detach().cpu().numpy() for x in self.calibration(size)]
            path = quantize_int8(path, path.with_name(path.stem + "-int8.onnx"), calibration=calib)
        return self._run_fn(self._session(path))

    def _run_fn(self, sess):
        name = sess.get_inputs()[0].name
        device = self.device

        def run(x: torch.Tensor) -> torch.Tensor:
            xs = x.detach().cpu().numpy().astype(np.float32)
            try:
                outs = [sess.run(None, {name: xs[i:i + 1]})[0] for i in range(len(xs))]  # graphs take batch 1
            except Exception as e:  # noqa: BLE001 - e.g. a graph that allocates more than the machine has
                raise WeightsError(f"the ONNX model failed to run: {_first_line(e)}") from None
            return torch.from_numpy(np.concatenate(outs)).to(device)

        return run

    def close(self) -> None:
        super().close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def make_backend(model: torch.nn.Module, options, calibration: Calibration | None = None) -> Backend:
    """The backend ``options.backend`` (resolved: no ``auto``) for ``model``, after checking that this
    machine can run it and that it runs ``options.precision``; one line naming what is missing."""
    cls = REGISTRY.get(options.backend)
    if cls is None:
        raise ConfigError(f"backend must be one of {', '.join(REGISTRY)} or auto, got {options.backend!r}")
    if options.precision not in cls.precisions:
        others = [n for n, c in REGISTRY.items() if options.precision in c.precisions and c.missing(options.device) is None]
        raise ConfigError(f"the {cls.name} backend runs {', '.join(cls.precisions)}, not {options.precision}"
                          + (f"; {options.precision} runs on: {', '.join(others)}" if others else ""))
    lack = cls.missing(options.device)
    if lack is not None:
        raise ConfigError(f"the {cls.name} backend needs {lack}; or use --backend auto")
    return cls.create(model, options, calibration)


def _first_line(e: Exception, limit: int = 300) -> str:
    """An exception from a native runtime, as one line (they carry pages of context)."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]
