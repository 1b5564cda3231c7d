"""ONNX export with the variant's canonical name in the metadata, reading it back, and checking an
export against PyTorch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..config import CONFIG_KEY, ModelConfig
from ..errors import ExportError, WeightsError
from ..models.structure import STRUCTURE_KEY, dump_structure

INPUT_SIZE_KEY = "fastdpt.input_size"


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, size: tuple[int, int] | None = None,
                opset: int = 17) -> Path:
    """Export a model for a fixed network input size (default: its config's) to ONNX, batch 1, with
    the canonical name in the metadata. Written through a temporary file; the model is not moved."""
    import onnx

    cfg: ModelConfig = model.config
    size = tuple(size or cfg.input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, *size, device=device)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # the graph is traced for one input size (each size gets its own): the model's size checks are
            # constants of that size by design, which the tracer warns of on every export
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["depth"],
                              opset_version=opset, dynamo=False)
        proto = onnx.load(str(tmp))
        meta = {CONFIG_KEY: cfg.name, INPUT_SIZE_KEY: f"{size[0]}x{size[1]}"}
        if structure := getattr(model, "structure", None):  # a pruned model: its shapes, for the record
            meta[STRUCTURE_KEY] = dump_structure(structure)
        stamp(proto, meta)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
        model.train(was_training)
    return path


WEIGHTS_KEY = "fastdpt.weights_sha256"  # metadata: a digest of the graph's weights, checked when the file is opened


def weights_digest(proto) -> str:
    """sha256 of an ONNX graph's weights (every initializer: name, type, shape, bytes, in name order)."""
    import hashlib

    from onnx import numpy_helper

    h = hashlib.sha256()
    for t in sorted(proto.graph.initializer, key=lambda t: t.name):
        h.update(f"{t.name}|{t.data_type}|{tuple(t.dims)}|".encode())
        h.update(t.raw_data if t.raw_data else numpy_helper.to_array(t).tobytes())
    return h.hexdigest()


def stamp(proto, meta: dict[str, str]) -> None:
    """Replace an ONNX model's metadata with ``meta`` and the digest of its weights as they are now."""
    del proto.metadata_props[:]
    for key, value in {**meta, WEIGHTS_KEY: weights_digest(proto)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_weights(path: str | os.PathLike) -> None:
    """Refuse an ONNX file whose weights are not the ones it was exported with (a flipped byte ran silently
    with other depths). A file exported before digests were recorded is taken as it is."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others
        raise WeightsError(f"cannot read ONNX model {path}: {e}") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return  # weights in other files: never an export of fastdpt's (the runtime vets their paths)
    recorded = {p.key: p.value for p in proto.metadata_props}.get(WEIGHTS_KEY)
    if recorded is not None and recorded != weights_digest(proto):
        raise WeightsError(f"{path}: its weights are not the ones it was exported with (damaged or changed since); "
                           "export it again with `fastdpt export`")


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    import onnx

    try:
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others
        raise WeightsError(f"cannot read ONNX model {path}: {e}") from None


def onnx_config(path: str | os.PathLike) -> ModelConfig:
    """The variant an exported ONNX file was made from (its metadata)."""
    meta = onnx_metadata(path)
    if CONFIG_KEY not in meta:
        raise WeightsError(f"{path} has no {CONFIG_KEY} metadata: export it with `fastdpt export`")
    return ModelConfig.from_name(meta[CONFIG_KEY])


def compare(model: torch.nn.Module, onnx_path: str | os.PathLike, inputs: list[torch.Tensor]) -> dict:
    """Max absolute and relative error of the ONNX model against PyTorch on the given inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    device = next(model.parameters()).device
    worst_abs, worst_rel = 0.0, 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x.to(device)).cpu().numpy()
        out = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})[0]
        err = np.abs(out - ref)
        worst_abs = max(worst_abs, float(err.max()))
        worst_rel = max(worst_rel, float(err.max() / max(np.abs(ref).max(), 1e-12)))
    return {"max_abs": worst_abs, "max_rel": worst_rel}
