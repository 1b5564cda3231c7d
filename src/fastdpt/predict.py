"""The Predictor: a model (or an exported file) behind a backend, with the variant's transforms.

image(s) -> :class:`~fastdpt.transforms.Transforms` (resize by the variant's rule, normalise) ->
backend (torch, torch.compile, ONNX Runtime) -> resize back to each image's size -> depth.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .io import read_image
from .options import DEFAULT_CMAP
from .transforms import Transforms, frame_size

if TYPE_CHECKING:
    from .runtime import RuntimeOptions


@dataclass
class DepthResult:
    """``depth``: H x W float32 at the input image's size; ``kind``: ``metric`` (metres) or
    ``relative`` (relative inverse depth, larger is nearer)."""

    depth: np.ndarray
    kind: str


class Predictor:
    """Runs a model on RGB images and returns depth at each image's own resolution.

    Args:
        model: a DPT, a preset or canonical name, a fastdpt ``.safetensors`` checkpoint, or an ONNX /
            OpenVINO (``.xml``) file exported by ``fastdpt export``.
        weights: weights for a preset or canonical name (official, Hugging Face or fastdpt file).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...
        backend: ``torch``, ``compile``, ``cudagraph``, ``onnxruntime``, ``openvino`` or ``auto`` (the
            fastest this machine runs; ``self.choice`` says what and why).
        precision: ``fp32``, ``fp16``/``bf16`` (GPU; bf16 also on CPUs with AMX / AVX512-BF16), ``int8``
            (ONNX Runtime or OpenVINO; needs ``calibration``), or ``auto``.
        threads: ONNX Runtime / OpenVINO intra-op threads (torch threads are the caller's to set).
        options: a :class:`~fastdpt.runtime.RuntimeOptions` instead of the loose arguments above.
        calibration: representative RGB frames (H x W x 3 uint8) for int8; each is resized to the
            network size of the exported graph.
        resize: how frames are resized into the network (see :mod:`fastdpt.transforms`).
        channels_last: run convolutions in channels-last memory order (often faster on GPUs).
        compile_mode: ``torch.compile`` mode for the ``compile`` backend (e.g. ``reduce-overhead``).

    Safe to call from several threads: inference is serialised by a lock. On a GPU the whole step
    stays on the device: uint8 frames are uploaded once (pinned, non-blocking), resized, normalised,
    run, resized back (and colour-mapped, :meth:`colorizer`) there; only the result comes back.
    """

    def __init__(self, model: torch.nn.Module | str | os.PathLike, weights: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", backend: str = "torch", precision: str = "fp32",
                 threads: int | None = None, calibration: Sequence[np.ndarray] | None = None,
                 resize: str = "auto", channels_last: bool = False, compile_mode: str | None = None,
                 options: "RuntimeOptions | None" = None) -> None:
        from .runtime import RuntimeOptions, make_backend
        from .runtime.exported import exported_options, is_exported, open_exported

        opts = options or RuntimeOptions(backend, precision, str(device), threads, compile_mode, channels_last)
        path = None if isinstance(model, torch.nn.Module) else str(model)
        if is_exported(path):
            opts = exported_options(path, opts)
        opts, self.choice = opts.resolve(calibration is not None)
        self.options = opts
        self.device = torch.device(opts.device)
        if is_exported(path):
            self.model = None
            self.config, self.backend = open_exported(path, opts)
        else:
            if not isinstance(model, torch.nn.Module):
                from .api import load

                model = load(model, weights, device=self.device)
            self.model = model.to(self.device).eval()
            self.config = model.config
            calib = self._calibration(calibration) if calibration is not None else None
            self.backend = make_backend(self.model, opts, calib)
        self.transforms = Transforms(self.config, self.device, resize=resize)
        self._lock = threading.Lock()

    def _calibration(self, frames: Sequence[np.ndarray]):
        spec = self.config.preprocessing

        def at(size: tuple[int, int]) -> list[torch.Tensor]:
            fixed = Transforms(replace(spec, input_size=size, keep_aspect=False), "cpu")
            return [fixed.preprocess(f) for f in frames]

        return at

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        return self.transforms.preprocess(image)

    def predict(self, image: np.ndarray | str | os.PathLike) -> DepthResult:
        """Depth for one image (an H x W x 3 RGB array or a file path)."""
        return self.predict_many([image])[0]

    def predict_batch(self, frames) -> torch.Tensor:
        """Depth (B, H, W) on the device for frames of one size (arrays, a (B, H, W, 3) array, or tensors)."""
        batch = self.transforms.as_batch(frames)
        x = self.transforms.preprocess(batch)
        with self._lock:
            y = self.backend(x)
        return self.transforms.postprocess(y, frame_size(batch))

    def predict_many(self, images: Sequence, batch_size: int = 8) -> list[DepthResult]:
        """Several images (arrays or paths), one result each, in order. Consecutive images of the same
        size run as one batch of up to ``batch_size``."""
        arrays = [im if isinstance(im, np.ndarray) else read_image(im) for im in images]
        results: list[DepthResult] = []
        i = 0
        while i < len(arrays):
            j = i + 1
            while j < len(arrays) and j - i < batch_size and arrays[j].shape == arrays[i].shape:
                j += 1
            depth = self.predict_batch(arrays[i:j]).cpu().numpy()
            results += [DepthResult(d, self.config.output_kind) for d in depth]
            i = j
        return results

    def colorizer(self, cmap: str = DEFAULT_CMAP):
        """Colour maps where the depth is: on the predictor's GPU (:class:`fastdpt.viz.DeviceColorizer`:
        only the uint8 image comes back), with NumPy on a CPU (:class:`~fastdpt.viz.HostColorizer`: the
        same colours, 3x faster there)."""
        from .viz import DeviceColorizer, HostColorizer

        return HostColorizer(cmap) if self.device.type == "cpu" else DeviceColorizer(cmap, self.device)

    def stream(self, stabilize: str = "flow", **options) -> "DepthStream":
        """A stateful, causal stream over this predictor: frames in order, each stabilised against
        the past (``stabilize``: ``flow``, ``scale`` or ``none``; see :mod:`fastdpt.stabilize`)."""
        return DepthStream(self, stabilize, **options)

    def close(self) -> None:
        """Release the backend's cached graphs and sessions (and their temporary files)."""
        self.backend.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DepthStream:
    """Frames of one video, in order: ``predict(frame)`` returns the stabilised depth; ``reset()``
    starts again (a new scene; cuts are also detected on their own)."""

    def __init__(self, predictor: Predictor, stabilize: str = "flow", **options) -> None:
        from .stabilize import Stabilizer

        self.predictor = predictor
        self.stabilizer = Stabilizer(stabilize, predictor.config.output_kind, **options)

    def predict(self, frame: np.ndarray) -> DepthResult:
        res = self.predictor.predict(frame)
        return DepthResult(self.stabilizer(frame, res.depth), res.kind)

    def reset(self) -> None:
        self.stabilizer.reset()
