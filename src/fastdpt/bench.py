"""Speed of variants: parameters, MACs, latency of the whole online step, throughput, memory.

Latency is what one frame costs online: resize in (cv2 bicubic) + normalise + forward + bicubic
resize back to the frame size, at batch 1, after warm-up, synchronised, median and p90 over runs.
Throughput is the forward pass alone on a batch of pre-processed frames.
MACs come from ``torch.utils.flop_counter`` on the meta device (matmuls and convolutions;
elementwise work is not counted), as FLOPs / 2.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from functools import lru_cache
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig, get_config
from .errors import ConfigError
from .models import DPT
from .predict import Predictor, network_size


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
    speedup: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def count_macs(config: ModelConfig, net_size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at ``net_size`` (counted on the meta device)."""
    with torch.device("meta"):
        model = DPT(config)
    model = model.to("meta").eval()
    x = torch.empty(batch, 3, *net_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_params(config: ModelConfig) -> int:
    """Parameters of a variant without allocating it. Heads, attention kernel, input size and output
    head change no parameter count, so variants that differ only there share one meta-device build."""
    return _params(config.backbone, config.depth, config.features)


@lru_cache(maxsize=None)
def _params(backbone: str, depth: int, features: int) -> int:
    cfg = ModelConfig(backbone=backbone, hooks=(0, depth - 1), features=features)  # depth >= 2 always
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


def bench_variant(name: str, input_size: tuple[int, int] = (352, 1216), batch_size: int = 1,
                  device: str = "cpu", precision: str = "fp32", runs: int = 10, warmup: int = 2,
                  threads: int | None = None, model: torch.nn.Module | None = None,
                  backend: str = "torch") -> BenchRow:
    """Benchmark one variant (random weights unless ``model`` is given) on frames of ``input_size``
    through a backend (``torch``, ``compile``, ``onnxruntime``; int8 through ONNX Runtime)."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    cfg = get_config(name)
    net = network_size(*input_size, cfg)
    rss_before = _reset_cpu_peak() if dev.type == "cpu" else None
    model = (model or DPT(cfg)).eval().to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    predictor = Predictor(model, device=dev, backend=backend, precision=precision, threads=threads)
    frame = np.random.default_rng(0).integers(0, 256, (*input_size, 3), dtype=np.uint8)
    predictor.predict(frame)  # builds lazily compiled / exported graphs outside the timed runs

    lat = _timed(lambda: predictor.predict(frame), dev, warmup, runs)
    med = statistics.median(lat)
    p90 = float(np.percentile(lat, 90))
    if batch_size == 1 or backend == "onnxruntime":  # exported graphs take batch 1
        throughput = 1000.0 / med
    else:
        xb = torch.randn(batch_size, 3, *net, device=dev)

        def batch():
            return predictor.backend(xb)

        bt = _timed(batch, dev, max(1, warmup // 2), max(2, runs // 2))
        throughput = batch_size * 1000.0 / statistics.median(bt)
    return BenchRow(
        name=name, canonical=cfg.name, input_size=f"{input_size[0]}x{input_size[1]}", net_size=f"{net[0]}x{net[1]}",
        params=count_params(model), macs=count_macs(cfg, net), latency_ms_median=round(med, 2),
        latency_ms_p90=round(p90, 2), fps=round(1000.0 / med, 3), throughput=round(throughput, 3),
        batch_size=batch_size if backend != "onnxruntime" else 1, threads=torch.get_num_threads(), device=str(dev),
        precision=precision, backend=backend,
        peak_mem_mb=round(_peak_mem_mb(dev, rss_before), 1), runs=runs,
    )


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
