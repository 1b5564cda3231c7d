"""Quantisation-aware int8 through NNCF -> OpenVINO.

``qat_int8``: NNCF inserts fake-quantisers into the (pruned, recovered) torch model and initialises
their ranges on calibration inputs, exactly as post-training int8 does; the fake-quantised model is
then fine-tuned for a few steps to reproduce the float model's own output on the frames (L1 on log
depth for metric models, the scale-and-shift-invariant loss on relative depth), so no labels are needed.
The last frames given are kept out of the fine-tuning: the state (the calibrated start, then every
quarter of the steps) whose output is closest to the float model's there is the one kept. Finally it is
converted to an OpenVINO model whose quantised layers run in int8 (written as ``.xml`` + ``.bin``
with the canonical name, as ``fastdpt export --format openvino`` writes, so every command opens it).

NNCF's fake-quantiser on the CPU is a C++ extension that torch compiles on first use (a C++ compiler is
needed; about a minute, cached under ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import CompressError, NonFiniteLossError

CALIBRATION_FRAMES = 16  # the frames NNCF sets its ranges on (post-training int8 gets the same ones)
VALIDATION_FRAMES = 4  # the last frames given, on which the fine-tuning's best state is chosen


def _libraries():
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise CompressError("quantisation-aware int8 needs NNCF and OpenVINO: pip install -e '.[openvino]'") from None
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # the first use compiles NNCF's CPU extension
    return nncf, ov


def qat_int8(model: torch.nn.Module, frames: list[np.ndarray], path: str | os.PathLike, steps: int = 100,
             lr: float = 1e-6, batch_size: int = 4, seed: int = 0,
             log: Callable[[str], None] = print) -> dict:
    """Fine-tune a fake-quantised copy of ``model`` on ``frames`` and write it as an int8 OpenVINO model
    at ``path`` (.xml). Returns what was done (calibration frames, steps, first and last loss)."""
    from ..losses import make_loss
    from ..runtime.openvino import save, stamp
    from ..transforms import Transforms

    nncf, ov = _libraries()
    path = Path(path)
    if path.suffix != ".xml":
        raise CompressError(f"an OpenVINO model is written as .xml (+ .bin), got {path.name}")
    if len(frames) < 2:
        raise CompressError("quantisation-aware training needs frames: pass --frames (videos, image folders)")
    cfg = model.config
    tf = Transforms(cfg)
    xs = [tf.preprocess(f) for f in frames]
    float_model = model.eval()
    with torch.no_grad():
        targets = [float_model(x) for x in xs]
    calib = xs[:CALIBRATION_FRAMES]
    # the fine-tuning learns on the first frames and is judged on the last ones (never the caller's held-out
    # frames): the state that reproduces the float model best there is kept, the calibrated start included
    n_val = max(1, min(VALIDATION_FRAMES, len(xs) // 4))
    train_idx, val_idx = list(range(len(xs) - n_val)), list(range(len(xs) - n_val, len(xs)))
    q = nncf.quantize(copy.deepcopy(float_model), nncf.Dataset(calib), subset_size=len(calib))
    q.eval()  # batch-norm statistics stay frozen; gradients still reach every weight and quantiser range
    kind = cfg.output_kind
    ssi = make_loss("ssi", kind) if kind == "relative" else None

    def loss_fn(pred, t):  # metric: log depth as the float model gives it (no scale invariance to hide behind)
        if ssi is not None:
            return ssi(pred, 1.0 / t.clamp_min(1e-6), t > 0)  # the loss takes depth-like targets
        ok = t > 0
        return (pred[ok].clamp_min(1e-6).log() - t[ok].log()).abs().mean()

    opt = torch.optim.AdamW([p for p in q.parameters() if p.is_floating_point()], lr=lr)  # NNCF keeps int flags too
    g = torch.Generator().manual_seed(seed)
    every = max(1, steps // 4)
    history = [(0, _disagreement(q, xs, targets, val_idx, kind))]
    best_state, best = copy.deepcopy(q.state_dict()), history[0]
    losses = []
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(steps):
            idx = [train_idx[i] for i in torch.randint(len(train_idx), (min(batch_size, len(train_idx)),),
                                                       generator=g).tolist()]
            x = torch.cat([xs[i] for i in idx])
            t = torch.cat([targets[i] for i in idx])
            loss = loss_fn(q(x), t)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"quantisation-aware training: loss {loss.item()} at step {step + 1}; "
                                         "try a smaller --qat-lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if (step + 1) % every == 0 or step + 1 == steps:
                history.append((step + 1, _disagreement(q, xs, targets, val_idx, kind)))
                log(f"  quantisation-aware step {step + 1}/{steps}: loss {losses[-1]:.5f}, "
                    f"AbsRel vs float on {n_val} validation frames {history[-1][1]:.5f}")
                if history[-1][1] < best[1]:
                    best_state, best = copy.deepcopy(q.state_dict()), history[-1]
    q.load_state_dict(best_state)
    q.eval()
    om = _convert(ov, q, xs[0])
    _store_int8_weights(om)
    stamp(om, model)  # the canonical name and the pruned structure
    path.parent.mkdir(parents=True, exist_ok=True)
    save(om, path)  # with the digest of its weights, checked when opened
    return {"calibration_frames": len(calib), "frames": len(xs), "validation_frames": n_val, "steps": steps, "lr": lr,
            "kept_step": best[0], "validation_abs_rel": {str(s): round(v, 6) for s, v in history},
            "loss_first": round(losses[0], 6) if losses else None, "loss_last": round(losses[-1], 6) if losses else None,
            "path": str(path)}


def _disagreement(q: torch.nn.Module, xs: list, targets: list, idx: list[int], kind: str) -> float:
    """AbsRel of the fake-quantised model's output against the float model's on frames ``idx`` (relative
    models after a least-squares scale and shift, as relative depth is scored)."""
    errs = []
    with torch.no_grad():
        for i in idx:
            a, b = targets[i].double().flatten(), q(xs[i]).double().flatten()
            if kind == "relative":
                design = torch.stack([b, torch.ones_like(b)], 1)
                b = design @ torch.linalg.lstsq(design, a[:, None]).solution[:, 0]
            ok = a.abs() > 1e-6
            errs.append(((b[ok] - a[ok]).abs() / a[ok].abs()).mean().item())
    return float(sum(errs) / len(errs))


def _store_int8_weights(om) -> bool:
    """Fold each weight's FakeQuantize into int8 constants (with the scale and zero point that
    dequantise them), as OpenVINO's model converter does: the file then holds a byte a weight instead of
    four, and the CPU plugin runs the same int8 kernels. False where this OpenVINO lacks the pass."""
    try:
        from openvino._offline_transformations import compress_quantize_weights_transformation
    except ImportError:
        return False
    compress_quantize_weights_transformation(om)
    return True


def _convert(ov, q: torch.nn.Module, example: torch.Tensor):
    """The fake-quantised model as an OpenVINO model: through the project's ONNX export, as
    :func:`fastdpt.runtime.openvino.convert` goes (NNCF's quantisers export as FakeQuantize operations,
    which the CPU plugin runs as int8)."""
    import tempfile

    from ..runtime.export import export_onnx
    from ..runtime.openvino import core

    with tempfile.TemporaryDirectory(prefix="fastdpt-qat-") as tmp:
        try:
            onnx_path = export_onnx(q, Path(tmp) / "qat.onnx", tuple(example.shape[-2:]))
            om = core().read_model(str(onnx_path))
        except Exception as e:  # noqa: BLE001 - the exporter and the reader raise many kinds
            raise CompressError("the quantisation-aware model could not be exported: "
                                f"{str(e).splitlines()[0][:200]}") from None
        return ov.clone_model(om) if hasattr(ov, "clone_model") else om
