"""Inference backends and export: torch eager, torch.compile, ONNX Runtime (fp32 / int8).

A backend maps a normalised network input (1, 3, H, W) float32 tensor to the model's output
(1, H, W) as a torch tensor on the predictor's device. ONNX models carry the variant's canonical
name in their metadata (``fastdpt.config``), so they can be run without being told what they are.
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig
from .errors import ConfigError, FastDPTError, WeightsError
from .weights import CONFIG_KEY

BACKENDS = ("torch", "compile", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class TorchBackend:
    """Eager PyTorch (``compile=True``: ``torch.compile``); fp16/bf16 through autocast."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32", compile: bool = False):
        if precision == "int8":
            raise ConfigError("int8 runs through ONNX Runtime: use --backend onnxruntime --precision int8")
        if precision in ("fp16", "bf16") and device.type == "cpu":
            raise ConfigError(f"{precision} on this CPU is far slower than fp32 (no native support); use fp32")
        self.model = model.to(device).eval()
        self.device = device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.fn = torch.compile(self.model, dynamic=False) if compile else self.model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        amp = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()
        with torch.inference_mode(), amp:
            return self.fn(x.to(self.device)).float()


class OrtBackend:
    """ONNX Runtime session over an exported model (one per input size for keep-aspect variants)."""

    def __init__(self, model: torch.nn.Module | None, device: torch.device, precision: str = "fp32",
                 onnx_path: str | os.PathLike | None = None, threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise FastDPTError("the onnxruntime backend needs `pip install -e '.[onnx]'`") from None
        if precision in ("fp16", "bf16"):
            raise ConfigError("the onnxruntime backend runs fp32 or int8 (quantised) models")
        self.ort = ort
        self.model = model
        self.device = device
        self.precision = precision
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="fastdpt-onnx-"))
        self.sessions: dict[tuple[int, int], object] = {}
        self.lock = threading.Lock()
        if onnx_path is not None:
            sess = self._session(Path(onnx_path))
            shape = sess.get_inputs()[0].shape
            self.sessions[(int(shape[2]), int(shape[3]))] = sess

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
        return self.ort.InferenceSession(str(path), opts, providers=self._providers())

    def _for_size(self, size: tuple[int, int]):
        with self.lock:
            if size not in self.sessions:
                if self.model is None:
                    raise ConfigError(f"this ONNX model takes {next(iter(self.sessions))}, not {size}")
                path = self.cache_dir / f"{self.model.config.name}-{size[0]}x{size[1]}.onnx"
                export_onnx(self.model, path, size)
                if self.precision == "int8":
                    path = quantize_int8(path, path.with_name(path.stem + "-int8.onnx"))
                self.sessions[size] = self._session(path)
            return self.sessions[size]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sess = self._for_size(tuple(x.shape[-2:]))
        out = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(self.device)


def make_backend(backend: str, model: torch.nn.Module, device: torch.device, precision: str = "fp32",
                 threads: int | None = None):
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend == "onnxruntime":
        return OrtBackend(model, device, precision, threads=threads)
    return TorchBackend(model, device, precision, compile=backend == "compile")


# -- export ----------------------------------------------------------------------------------------
def export_onnx(model: torch.nn.Module, path: str | os.PathLike, size: tuple[int, int] | None = None,
                opset: int = 17) -> Path:
    """Export a model for a fixed network input size (default: its config's) to ONNX, with the
    canonical name in the metadata. Written through a temporary file."""
    import onnx

    cfg: ModelConfig = model.config
    size = tuple(size or cfg.input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    x = torch.zeros(1, 3, *size)
    tmp = path.with_name(path.name + ".part")
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["depth"], opset_version=opset,
                          dynamo=False)
    proto = onnx.load(str(tmp))
    for key, value in {CONFIG_KEY: cfg.name, "fastdpt.input_size": f"{size[0]}x{size[1]}"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, method: str = "static",
                  calibration: list[np.ndarray] | None = None) -> Path:
    """int8 ONNX model, keeping the metadata.

    ``static`` (default): QDQ, per-channel int8 weights and uint8 activations, calibrated on
    ``calibration`` inputs (default: 8 synthetic driving frames at the model's input size); convolutions
    and matmuls run as int8 kernels. ``dynamic``: int8 MatMul/Gemm weights, activations quantised on
    the fly (no calibration; slower on CPUs at these sizes, see BENCHMARKS.md).
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    tmp = dst.with_name(dst.name + ".part")
    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8)
        elif method == "static":
            if calibration is None:
                h, w = (int(v) for v in meta.get("fastdpt.input_size", "0x0").split("x"))
                # synthetic driving frames only: a noise image widens the activation ranges so much that
                # a trained model's depth is ruined (AbsRel 0.29 -> 3.2 on synthetic KITTI, see BENCHMARKS.md)
                calibration = [x.numpy() for x in verification_inputs((h, w), frames=8)[1:]]
            name = onnx.load(str(src), load_external_data=False).graph.input[0].name

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter([{name: np.asarray(x, np.float32)} for x in calibration])

                def get_next(self):
                    return next(self.items, None)

            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        else:
            raise ConfigError(f"int8 method must be 'static' or 'dynamic', got {method!r}")
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for k, v in {**meta, "fastdpt.int8": method}.items():
            e = proto.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(proto, str(tmp))
        os.replace(tmp, dst)
    finally:
        for p in (tmp, pre):
            if p.exists():
                p.unlink()
    return dst


def onnx_config(path: str | os.PathLike) -> ModelConfig:
    """The variant an exported ONNX file was made from (its metadata)."""
    import onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others
        raise WeightsError(f"cannot read ONNX model {path}: {e}") from None
    if CONFIG_KEY not in meta:
        raise WeightsError(f"{path} has no {CONFIG_KEY} metadata: export it with `fastdpt export`")
    return ModelConfig.from_name(meta[CONFIG_KEY])


def compare(model: torch.nn.Module, onnx_path: str | os.PathLike, inputs: list[torch.Tensor]) -> dict:
    """Max absolute and relative error of the ONNX model against PyTorch on the given inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst_abs, worst_rel = 0.0, 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        err = np.abs(out - ref)
        worst_abs = max(worst_abs, float(err.max()))
        worst_rel = max(worst_rel, float(err.max() / max(np.abs(ref).max(), 1e-12)))
    return {"max_abs": worst_abs, "max_rel": worst_rel}


def verification_inputs(size: tuple[int, int], seed: int = 0, frames: int = 2) -> list[torch.Tensor]:
    """Inputs to check an export with (and calibrate int8 on): a random image and ``frames``
    synthetic driving frames, normalised."""
    import cv2

    from .data.synthetic import make_scene, render

    rng = np.random.default_rng(seed)
    images = [rng.random((*size, 3)).astype(np.float32)]
    scene = make_scene(rng, 12 * frames)
    for frame in range(0, 12 * frames, 12):
        rgb, _ = render(scene, frame, (375, 1242))
        images.append(cv2.resize(rgb.astype(np.float32) / 255, (size[1], size[0]), interpolation=cv2.INTER_CUBIC))
    return [(torch.from_numpy(im.transpose(2, 0, 1).copy())[None] - 0.5) / 0.5 for im in images]
