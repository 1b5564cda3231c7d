"""Speed of variants: parameters, MACs, latency of the whole online step, throughput, memory.

Latency is what one frame costs online: the Predictor's whole step (frame in host memory -> the
variant's transforms in, forward, resize back to the frame size -> depth in host memory), at batch
1, after warm-up, synchronised, median and p90 over runs. Beside it, ``net_ms_median`` is the
network alone (the backend on an input already on the device), so the per-frame overhead shows.
On a GPU, peak memory is that of the measured passes only (reset after warm-up, so cuDNN's
algorithm search is not counted).
Throughput is the forward pass alone on a batch of pre-processed frames.
MACs come from ``torch.utils.flop_counter`` on the meta device (matmuls and convolutions;
elementwise work is not counted), as FLOPs / 2.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import EXPORTED_SUFFIXES, ModelConfig
from .errors import ConfigError
from .io import atomic_write
from .models import DPT
from .models.structure import apply_structure
from .predict import Predictor
from .presets import get_config, resolve_names
from .runtime import AUTO, REGISTRY, RuntimeOptions, matrix_features
from .runtime.exported import is_exported, readers
from .transforms import network_size


@dataclass
class BenchRow:
    name: str
    canonical: str
    input_size: str
    net_size: str
    params: int
    macs: int
    latency_ms_median: float
    latency_ms_p90: float
    fps: float
    throughput: float
    batch_size: int
    threads: int
    device: str
    precision: str
    peak_mem_mb: float
    runs: int
    backend: str = "torch"
    net_ms_median: float | None = None
    channels_last: bool = False
    speedup: float | None = None
    cpu_features: str = ""  # the CPU's matrix features (AMX, AVX-512 BF16/VNNI, AVX2) for CPU rows
    file_mb: float | None = None  # size of the weights file a checkpoint row was loaded from

    def as_dict(self) -> dict:
        return asdict(self)


def count_macs(config: ModelConfig, net_size: tuple[int, int], batch: int = 1, structure: dict | None = None) -> int:
    """Multiply-accumulates of one forward pass at ``net_size`` (counted on the meta device); ``structure``:
    the pruned shapes of a compressed model (:mod:`fastdpt.models.structure`)."""
    with torch.device("meta"):
        model = apply_structure(DPT(config), structure or {})
    model = model.to("meta").eval()
    x = torch.empty(batch, 3, *net_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def _file_mb(path: str | None) -> float | None:
    """A model file's size in MB (an OpenVINO IR's .xml with its .bin)."""
    if not path or not os.path.isfile(path):
        return None
    files = [path] + ([str(Path(path).with_suffix(".bin"))] if str(path).endswith(".xml") else [])
    return round(sum(os.path.getsize(p) for p in files if os.path.isfile(p)) / 2**20, 2)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_params(config: ModelConfig) -> int:
    """Parameters of a variant without allocating it. Heads, attention kernel, input size and output
    head change no parameter count, so variants that differ only there share one meta-device build."""
    return _params(config.backbone, config.num_blocks, config.features)


@lru_cache(maxsize=None)
def _params(backbone: str, blocks: int, features: int) -> int:
    cfg = ModelConfig(backbone=backbone, hooks=(0, blocks - 1), features=features)  # blocks >= 2 always
    with torch.device("meta"):
        return count_params(DPT(cfg))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_cpu_peak() -> float | None:
    """Reset the process's resident high-water mark (Linux) and return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _peak_mem_mb(device: torch.device, rss_before: float | None) -> float:
    """GPU: peak allocated by torch. CPU: peak resident memory added since the model was built
    (weights + activations + workspace), from Linux's VmHWM; elsewhere the process's high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_mb("VmHWM")
    if rss_before is not None and hwm is not None:
        return hwm - rss_before
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _timed(fn: Callable[[], object], device: torch.device, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return times


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def bench_variant(name: str, input_size: tuple[int, int] = (352, 1216), batch_size: int = 1,
                  options: RuntimeOptions | None = None, runs: int = 10, warmup: int = 2,
                  model: torch.nn.Module | None = None, calibration: Sequence[np.ndarray] | None = None,
                  source: str | os.PathLike | None = None, **runtime) -> BenchRow:
    """Benchmark one variant (random weights unless ``model`` is given) on frames of ``input_size``
    through ``options`` (:class:`~fastdpt.runtime.RuntimeOptions`: backend, precision, device, threads,
    compile mode, memory order; or its fields as keywords, e.g. ``backend="openvino"``); int8 is
    calibrated on ``calibration`` frames. ``source``: an exported file (ONNX, OpenVINO IR, e.g. a
    quantisation-aware int8 model) to run instead, ``model`` (the torch model it was made from) then
    only giving the counts. Thread count and cuDNN settings are restored afterwards."""
    options = options or RuntimeOptions(**runtime)
    dev = torch.device(options.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    with torch_threads(options.threads), cudnn_benchmark(dev.type == "cuda"):
        return _bench(name, input_size, batch_size, options, runs, warmup, model, calibration, source)


def _bench(name: str, input_size, batch_size: int, options: RuntimeOptions, runs: int, warmup: int, model, calibration,
           source=None):
    cfg = model.config if model is not None else get_config(name)
    net = network_size(*input_size, cfg)
    dev = torch.device(options.device)
    rss_before = _reset_cpu_peak() if dev.type == "cpu" else None
    model = (model or DPT(cfg)).eval()
    if source is None:  # an exported file runs its own weights; the model only gives the counts
        model = model.to(dev)
    predictor = Predictor(str(source) if source else model, calibration=calibration, options=options)
    backend, precision = predictor.options.backend, predictor.options.precision  # auto resolved
    if source is not None:
        from .runtime.openvino import ir_quantised

        if ir_quantised(source):  # the file's own int8 (the precision option is only a hint for the rest)
            precision = "int8" if precision in ("fp32", "int8") else f"int8+{precision}"
    try:
        frame = np.random.default_rng(0).integers(0, 256, (*input_size, 3), dtype=np.uint8)
        predictor.predict(frame)  # builds lazily compiled / exported / captured graphs outside the timed runs
        x = predictor.transforms.preprocess(frame)
        for _ in range(warmup):
            predictor.predict(frame)
            predictor.backend(x)
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        lat = _timed(lambda: predictor.predict(frame), dev, 0, runs)
        net_times = _timed(lambda: predictor.backend(x), dev, 0, runs)
        med = statistics.median(lat)
        p90 = float(np.percentile(lat, 90))
        batched = batch_size if REGISTRY[backend].batches else 1  # a backend that runs one frame a call: 1
        if batched == 1:
            throughput = 1000.0 / med
        else:
            xb = torch.randn(batch_size, 3, *net, device=dev)
            bt = _timed(lambda: predictor.backend(xb), dev, max(1, warmup // 2), max(2, runs // 2))
            throughput = batch_size * 1000.0 / statistics.median(bt)
        peak = _peak_mem_mb(dev, rss_before)
    finally:
        predictor.close()
    return BenchRow(
        name=name, canonical=cfg.name, input_size=f"{input_size[0]}x{input_size[1]}", net_size=f"{net[0]}x{net[1]}",
        params=count_params(model), macs=count_macs(cfg, net, structure=getattr(model, "structure", None)),
        file_mb=_file_mb(str(source) if source else getattr(model, "weights_path", None)), latency_ms_median=round(med, 2),
        latency_ms_p90=round(p90, 2), fps=round(1000.0 / med, 3), throughput=round(throughput, 3),
        batch_size=batched, threads=torch.get_num_threads(),
        device=str(dev), precision=precision, backend=backend, peak_mem_mb=round(peak, 1), runs=runs,
        net_ms_median=round(statistics.median(net_times), 3), channels_last=options.channels_last,
        cpu_features=" ".join(matrix_features()) if dev.type == "cpu" else "",
    )


def interleaved_ms(predictors: dict, frame: np.ndarray, runs: int) -> dict:
    """Median whole-step latency (ms) of each predictor, timed in interleaved rounds, with the spread."""
    times = {k: [] for k in predictors}
    for p in predictors.values():  # warm-up (lazy graphs, caches)
        p.predict(frame)
    for _ in range(runs):
        for k, p in predictors.items():
            t0 = time.perf_counter()
            p.predict(frame)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2), "max_ms": round(max(v), 2)}
            for k, v in times.items()}


STAGES = ("decode", "preprocess", "network", "postprocess", "colour", "encode")


def bench_stages(name: str, input_size: tuple[int, int] = (375, 1242), options: RuntimeOptions | None = None,
                 runs: int = 10, warmup: int = 2, model: torch.nn.Module | None = None,
                 source: str | os.PathLike | None = None, **runtime) -> dict:
    """The whole online step stage by stage on one frame (median ms of each): PNG decode, preprocess
    (resize + normalise), network, postprocess (resize back), colour map, PNG encode; ``share`` is each
    stage's part of the sum, so the cost around the network is visible."""
    from .io import decode_image, encode_png

    options = options or RuntimeOptions(**runtime)
    dev = torch.device(options.device)
    with torch_threads(options.threads):
        cfg = model.config if model is not None else get_config(name)
        predictor = Predictor(str(source) if source else (model or DPT(cfg)).eval().to(dev), options=options)
        try:
            rng = np.random.default_rng(0)
            frame = rng.integers(0, 256, (*input_size, 3), dtype=np.uint8)
            png = encode_png(frame)
            colorizer = predictor.colorizer()
            state = {}
            steps = {
                "decode": lambda: state.__setitem__("frame", decode_image(png)),
                "preprocess": lambda: state.__setitem__("x", predictor.transforms.preprocess(state["frame"])),
                "network": lambda: state.__setitem__("y", predictor.backend(state["x"])),
                "postprocess": lambda: state.__setitem__("depth", predictor.transforms.postprocess(state["y"], input_size)),
                "colour": lambda: state.__setitem__("vis", colorizer(state["depth"], cfg.output_kind)[0]),
                "encode": lambda: encode_png(np.asarray(state["vis"])),
            }
            times = {k: [] for k in STAGES}
            for i in range(warmup + runs):
                for k in STAGES:
                    t0 = time.perf_counter()
                    steps[k]()
                    _sync(dev)
                    if i >= warmup:
                        times[k].append((time.perf_counter() - t0) * 1000)
        finally:
            predictor.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    return {"name": name, "canonical": cfg.name, "input_size": f"{input_size[0]}x{input_size[1]}",
            "backend": predictor.options.backend, "precision": predictor.options.precision,
            "threads": options.threads or torch.get_num_threads(), "total_ms": round(total, 2),
            "stages": {k: {"ms": round(med[k], 3), "share": round(med[k] / total, 4)} for k in STAGES}}


def all_runtimes(device: str = "cpu") -> list[tuple[str, str]]:
    """Every (backend, precision) this machine runs natively (``bench --backend all``)."""
    from .runtime import available_backends, native_bf16

    out = []
    for name in available_backends(device):
        if not REGISTRY[name].in_bench_all:  # compile: minutes a variant on a CPU; asked for by name
            continue
        for p in REGISTRY[name].precisions:
            if p in ("tf32", "fp16") and device == "cpu":
                continue
            if p == "bf16" and device == "cpu" and not native_bf16():
                continue
            out.append((name, p))
    order = {n: i for i, n in enumerate(REGISTRY)}
    return sorted(out, key=lambda bp: (order[bp[0]], bp[1] != "fp32", bp[1]))


def is_model_file(name: str | os.PathLike) -> bool:
    """A checkpoint (.safetensors) or an exported file (.onnx, OpenVINO .xml) rather than a variant name."""
    return str(name).endswith((".safetensors", *EXPORTED_SUFFIXES))


def exported_model(path: str | os.PathLike) -> torch.nn.Module:
    """The variant an exported file was made from, with the pruned shapes it records, on the meta device
    (no memory): what the file's parameter and MAC counts are read from; the file's own weights run."""
    from .runtime.openvino import ir_config, ir_structure

    cfg, structure = ir_config(path), ir_structure(path)
    with torch.device("meta"):
        return apply_structure(DPT(cfg), structure, source=str(path))


def file_options(path: str | os.PathLike, options: dict) -> dict:
    """Runtime options for an exported file: torch (the default for variants) cannot run one, so the
    file's ``auto`` choice (OpenVINO, or ONNX Runtime for .onnx without it) runs it instead."""
    if is_exported(path) and options.get("backend", "torch") == "torch":
        return {**options, "backend": AUTO}
    return options


def runs_file(name: str, backend: str, precision: str) -> bool:
    """Whether ``bench --backend all`` times a name with this backend and precision: a variant or checkpoint
    with every one; an exported file only with the backends that read it (OpenVINO; ONNX Runtime for
    .onnx) in float precisions (int8 is the file's own, shown in its rows)."""
    return not is_exported(name) or (backend in readers(name) and precision in ("fp32", "bf16"))


def bench_many(names: Sequence[str], baseline: str | None = None, on_row: Callable[[int, int, BenchRow], None] | None = None,
               **options) -> list[BenchRow]:
    """Benchmark presets, canonical names, groups or globs in one run, the ``baseline`` first (also
    when it is not in ``names``); each row's ``speedup`` is latency(baseline) / latency(row). A
    ``.safetensors`` checkpoint runs its own weights; an exported ``.onnx`` / ``.xml`` file (an int8
    model of ``fastdpt compress --qat`` ...) runs as it is, through OpenVINO or ONNX Runtime."""
    todo = [n for name in names for n in ([str(name)] if is_model_file(name) else resolve_names([name]))]
    if baseline and not is_model_file(baseline):
        resolve_names([baseline])
    order = ([baseline] if baseline and baseline not in todo else []) + todo
    rows = []
    for i, name in enumerate(order, 1):
        if is_exported(name):
            if not os.path.isfile(name):
                raise ConfigError(f"model file not found: {name}")
            rows.append(bench_variant(name, model=exported_model(name), source=name, **file_options(name, options)))
        elif is_model_file(name):  # a trained checkpoint (a distilled student ...): its own weights and variant
            from .api import load

            rows.append(bench_variant(name, model=load(name), **options))
        else:
            rows.append(bench_variant(name, **options))
        if on_row:
            on_row(i, len(order), rows[-1])
    if baseline:
        base = next(r for r in rows if r.name == baseline)
        for r in rows:
            r.speedup = round(base.latency_ms_median / r.latency_ms_median, 3)
    return rows


def write_bench_json(rows: Sequence[BenchRow], path: str | os.PathLike, command: str | None = None) -> Path:
    """Rows with the machine and library versions, as JSON (written atomically)."""
    import json

    payload = {"environment": environment(), "command": command or " ".join(sys.argv),
               "rows": [r.as_dict() for r in rows]}
    text = json.dumps(payload, indent=1)
    return atomic_write(path, lambda p: p.write_text(text))


def environment() -> dict:
    """Machine and library versions, recorded with every benchmark."""
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "processor": _cpu_name(), "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# -- attention scaling ---------------------------------------------------------------------------------
ATTN_TOKENS = (144, 576, 1024, 2304, 4096, 9216)
ATTN_HEADS = (1, 12, 24)
ATTN_FEATURES = (None, 64, 128)  # FAVOR+ random features per head (None: int(d ln d))


def bench_attention(device: str = "cpu", heads=ATTN_HEADS, tokens=ATTN_TOKENS, features=ATTN_FEATURES, dim: int = 768,
                    runs: int = 3, warmup: int = 1, threads: int | None = None, max_matrix_gb: float = 2.0,
                    on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One attention block (qkv projection, attention, output projection), batch 1, ``dim`` wide:
    exact softmax through ``scaled_dot_product_attention`` (``sdpa``), the same written out as
    softmax(QK^T)V (``math``; skipped where its N x N matrices would pass ``max_matrix_gb``), and
    FAVOR+ with each number of random features. Median milliseconds per configuration."""
    import torch.nn.functional as F

    from .models.attention import Attention

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    rows = []
    with torch_threads(threads), torch.inference_mode():
        for h in heads:
            kernels = [("sdpa", Attention(dim, h, kernel="softmax"))]
            for m in features:
                kernels.append((f"favor{'' if m is None else m}", Attention(dim, h, kernel="performer", nb_features=m)))
            for n in tokens:
                x = torch.randn(1, n, dim, device=dev)
                for name, attn in kernels:
                    attn = attn.to(dev).eval()
                    ms = statistics.median(_timed(lambda: attn(x), dev, warmup, runs))
                    rows.append({"kernel": name, "heads": h, "tokens": n, "ms": round(ms, 3),
                                 "features": attn.projection.shape[0] if name.startswith("favor") else None})
                    if on_row:
                        on_row(rows[-1])
                matrix_gb = h * n * n * 4 / 2**30
                if matrix_gb <= max_matrix_gb:
                    attn = kernels[0][1]

                    def math_path():
                        b, t, c = x.shape
                        q, k, v = attn.qkv(x).reshape(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
                        w = F.softmax((q @ k.transpose(-2, -1)) * (c // h) ** -0.5, dim=-1)
                        return attn.proj((w @ v).transpose(1, 2).reshape(b, t, c))

                    ms = statistics.median(_timed(math_path, dev, warmup, runs))
                    rows.append({"kernel": "math", "heads": h, "tokens": n, "ms": round(ms, 3), "features": None})
                else:
                    rows.append({"kernel": "math", "heads": h, "tokens": n, "ms": None, "features": None,
                                 "skipped": f"{matrix_gb:.1f} GB of attention matrices"})
                if on_row:
                    on_row(rows[-1])
    return rows


def favor_crossover(rows: list[dict]) -> dict:
    """Per head count, the smallest token count from which default FAVOR+ is faster than SDPA (None: never)."""
    out = {}
    for h in sorted({r["heads"] for r in rows}):
        sd = {r["tokens"]: r["ms"] for r in rows if r["heads"] == h and r["kernel"] == "sdpa"}
        fv = {r["tokens"]: r["ms"] for r in rows if r["heads"] == h and r["kernel"] == "favor"}
        out[h] = next((n for n in sorted(sd) if n in fv and fv[n] < sd[n]), None)
    return out
