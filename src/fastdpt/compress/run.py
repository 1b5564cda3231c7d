"""``compress``: prune -> recover -> cluster -> save -> compare, the job behind ``fastdpt compress``.

It writes ``OUT/model.safetensors`` (the compressed model: canonical name plus pruned shapes, loadable
by every command) and ``OUT/report.json`` (parameters, MACs, file size, whole-step latency before and
after in one interleaved run, agreement with the uncompressed model), with the recovery's own run
folder under ``OUT/recover``. The input checkpoint is never written to.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CompressError
from .config import CompressConfig

AGREEMENT_FRAMES = 8  # frames of --frames scored against the uncompressed model (the last ones sampled)
TAYLOR_FRAMES = 8  # frames whose gradients rank channels for --importance taylor (before the agreement ones)
QAT_FRAMES = 64  # frames the quantisation-aware model is calibrated and fine-tuned on (before the agreement ones)


def _check_out(cfg: CompressConfig) -> Path:
    out = Path(cfg.out)
    src = Path(cfg.checkpoint)
    if src.is_file() and out.resolve() in src.resolve().parents:
        raise CompressError(f"--out {out} holds the checkpoint being compressed ({src}); choose another folder")
    if out.exists() and not out.is_dir():
        raise CompressError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise CompressError(f"{out} is not empty (an earlier compression?): pass --overwrite to replace it, "
                            "or choose another --out")
    return out


def _frames(cfg: CompressConfig, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` frames spread over --frames (for Taylor gradients and the agreement check)."""
    if not cfg.frames:
        return []
    from ..distill.sources import discover, sample

    kept: list[np.ndarray] = []
    seqs = discover(list(cfg.frames))
    total = sum(len(s.files) for s in seqs if s.files) or limit
    sample(seqs, every=max(1, total // limit), max_frames=limit, on_frame=lambda f: kept.append(f.frame))
    return kept


def _stats(model, net: tuple[int, int], path: Path | None) -> dict:
    from ..bench import count_macs, count_params

    return {"params": count_params(model), "macs": count_macs(model.config, net, structure=getattr(model, "structure", None)),
            "file_bytes": path.stat().st_size if path is not None and path.is_file() else None}


def split_frames(frames: list) -> tuple[list, list]:
    """Frames for fitting (Taylor gradients, QAT, calibration) and frames held out for the agreement check:
    the last ``AGREEMENT_FRAMES``, at most half of them, never the same frames (with 8 or fewer, the check
    used to score the frames the model was fitted on); a single frame is both, and the report says so."""
    if len(frames) < 2:
        return frames, frames
    k = min(AGREEMENT_FRAMES, len(frames) // 2)
    return frames[:-k], frames[-k:]


def _agreement(original, compressed, frames: list[np.ndarray], in_sample: bool = False) -> dict | None:
    """How far the compressed model's output is from the uncompressed one's on the same frames: AbsRel
    of the compressed output scored against the original's as if it were ground truth, and the median
    per-pixel relative difference. Relative (inverse-depth) models are compared after a least-squares
    scale and shift of each compressed output onto the original, as relative depth is evaluated."""
    if not frames:
        return None
    relative = original.config.output_kind == "relative"
    rel = []
    for f in frames:
        a = original.predict(f).depth.astype(np.float64)
        b = compressed.predict(f).depth.astype(np.float64)
        ok = np.isfinite(a) & np.isfinite(b) & (np.abs(a) > 1e-6)
        if relative:
            (s, t), *_ = np.linalg.lstsq(np.stack([b[ok], np.ones(int(ok.sum()))], 1), a[ok], rcond=None)
            b = s * b + t
        rel.append(np.abs(b[ok] - a[ok]) / np.abs(a[ok]))
    r = np.concatenate(rel)
    return {"frames": len(frames), "held_out": not in_sample, "abs_rel_vs_original": round(float(r.mean()), 5),
            "median_rel_diff": round(float(np.median(r)), 5), "scale_shift_aligned": relative}


def _recover(cfg: CompressConfig, pruned: Path, name: str, out: Path, log) -> dict:
    """Fine-tune the pruned model (saved at ``pruned``, variant ``name``); returns what the recovery
    wrote and measured."""
    if cfg.recover == "distill":
        from ..distill import DistillConfig, distill

        dcfg = DistillConfig(teacher=cfg.checkpoint, out=str(out / "recover"), frames=cfg.frames,
                             student=name, student_init=str(pruned), steps=cfg.steps,
                             batch_size=cfg.batch_size, lr=cfg.lr, threads=cfg.threads, seed=cfg.seed,
                             max_frames=cfg.max_frames, progress=cfg.progress, bench_runs=cfg.bench_runs,
                             flicker_frames=0, color_jitter=False)  # recovery as measured (BENCHMARKS, compression)
        report = distill(dcfg, log=log)
        return {"kind": "distill", "path": report["student"]["path"], "run": str(out / "recover"),
                "agreement_with_teacher": report["agreement"]["student"]}
    from ..data.kitti import DataPaths, fits_kb_crop, read_split
    from ..io import read_image
    from ..training import TrainConfig, train

    paths = DataPaths.resolve(cfg.data_root, train_split=None, val_split=None)
    first = read_split(paths.splits["train_split"])[0]
    h, w = read_image(paths.raw_root / first.rgb).shape[:2]
    # dense depth where the data root has it (synthetic drives, labels); the KB crop where frames are KITTI-sized
    tcfg = TrainConfig(model=name, out=str(out / "recover"), data_root=cfg.data_root, init=str(pruned),
                       max_steps=cfg.steps, epochs=10**6, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                       progress=cfg.progress, dense_gt=paths.dense_root is not None, kb_crop=fits_kb_crop(h, w))
    result = train(tcfg, overwrite=(out / "recover").exists())
    # the best validated weights; the last ones when the run was too short to validate
    path = result["best"] if Path(result["best"]).is_file() else result["last"]
    return {"kind": "train", "path": path, "run": str(out / "recover"), "best_metrics": result["best_metrics"]}


def _load_checkpoint(checkpoint: str):
    """The model to compress: a fastdpt checkpoint, or a preset with its official weights cached. Another
    kind of file (an official or Hugging Face one) is refused naming the command that converts it."""
    from ..api import load
    from ..weights import read_checkpoint_config

    path = Path(checkpoint)
    if path.is_file() and path.suffix != ".safetensors" or (path.suffix == ".safetensors" and path.is_file()
                                                              and read_checkpoint_config(path) is None):
        raise CompressError(f"{path} is not a fastdpt checkpoint (an official or Hugging Face file?): make one first "
                            f"with `fastdpt warm-start VARIANT --init {path} -o model.safetensors`, then compress that")
    return load(checkpoint)


def compress(cfg: CompressConfig, log: Callable[[str], None] = print) -> dict:
    """Compress ``cfg.checkpoint`` as ``cfg`` says; returns the report (also ``OUT/report.json``)."""
    import torch

    from ..api import load
    from ..bench import interleaved_ms
    from ..io import write_text
    from ..predict import Predictor
    from ..runtime import RuntimeOptions
    from ..transforms import network_size
    from ..weights import save_checkpoint
    from .cluster import cluster, palettised_bytes
    from .prune import PruneSpec, check_spec, prune

    out = _check_out(cfg)
    spec = PruneSpec.parse(cfg.prune, cfg.importance) if cfg.prune else None
    for src in cfg.frames:
        if not Path(src).exists():
            raise CompressError(f"frames source not found: {src}")
    if cfg.data_root and not Path(cfg.data_root).is_dir():
        raise CompressError(f"--data-root not found: {cfg.data_root}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    original = _load_checkpoint(cfg.checkpoint)
    if spec is not None:
        check_spec(original, spec)  # before any slow work
    out.mkdir(parents=True, exist_ok=True)
    frame_hw = cfg.frame_hw()
    net = network_size(*frame_hw, original.config)
    src_path = Path(getattr(original, "weights_path", cfg.checkpoint))
    report: dict = {"config": cfg.as_dict(), "checkpoint": str(cfg.checkpoint), "variant": original.config.name,
                    "before": _stats(original, net, src_path), "times": {}}
    model = copy.deepcopy(original).train(False)
    frames = _frames(cfg, AGREEMENT_FRAMES + (QAT_FRAMES if cfg.qat else TAYLOR_FRAMES))
    seen, held_out = split_frames(frames)
    t0 = time.perf_counter()
    if spec is not None:
        from ..transforms import Transforms

        tf = Transforms(model.config)
        example = torch.zeros(1, 3, *network_size(*model.config.input_size, model.config))
        batches = [(tf.preprocess(f), None) for f in seen[:TAYLOR_FRAMES]]
        structure = prune(model, spec, example, batches)
        pruned = save_checkpoint(model, out / "pruned.safetensors",
                                 {"fastdpt.compressed_from": str(cfg.checkpoint), "fastdpt.prune": spec.label()})
        report["prune"] = {**spec.as_dict(), "label": spec.label(), "structure": structure,
                           "params_after": _stats(model, net, None)["params"]}
        report["times"]["prune_s"] = round(time.perf_counter() - t0, 2)
        log(f"pruned {spec.label()}: {report['before']['params'] / 1e6:.2f} M -> "
            f"{report['prune']['params_after'] / 1e6:.2f} M parameters ({pruned})")
        if cfg.recover != "none":
            t1 = time.perf_counter()
            report["recover"] = _recover(cfg, pruned, model.config.name, out, log)
            report["times"]["recover_s"] = round(time.perf_counter() - t1, 2)
            model = load(report["recover"]["path"])
    if cfg.cluster is not None:
        t2 = time.perf_counter()
        report["cluster"] = cluster(model, cfg.cluster, cfg.seed)
        report["times"]["cluster_s"] = round(time.perf_counter() - t2, 2)
        log(f"clustered {report['cluster']['tensors']} tensors to at most {cfg.cluster} values each")
    target = save_checkpoint(model, out / "model.safetensors",
                             {"fastdpt.compressed_from": str(cfg.checkpoint), "fastdpt.compress": json.dumps(
                                 {"prune": spec.label() if spec else None, "cluster": cfg.cluster,
                                  "recover": cfg.recover, "qat": cfg.qat})})
    model = load(target)  # what a user gets back: the file, read as every command reads it
    report["after"] = _stats(model, net, target)
    if cfg.cluster is not None:
        report["after"]["palettised_bytes"] = palettised_bytes(model, cfg.cluster)
    options = RuntimeOptions(cfg.backend, "auto", "cpu", cfg.threads)
    preds = {"before": Predictor(original, options=options), "after": Predictor(model, options=options)}
    try:
        if cfg.qat:
            from .qat import CALIBRATION_FRAMES, qat_int8

            t3 = time.perf_counter()
            log(f"quantisation-aware int8 on {len(seen)} frames, {cfg.qat_steps} steps ...")
            from ..runtime.cpu import native_int8

            if not native_int8():
                log("note: this CPU has no native int8 (VNNI / AMX): the int8 model runs here through AVX2 kernels "
                    "whose 16-bit sums can saturate, so it may be slower and less exact than on the CPUs it is for")
            report["qat"] = qat_int8(model, seen, out / "model-int8.xml", cfg.qat_steps, cfg.qat_lr, cfg.batch_size,
                                     cfg.seed, log)
            report["times"]["qat_s"] = round(time.perf_counter() - t3, 2)
            # the file's quantised layers run in int8 and the rest in float32, as post-training int8's do
            preds["after int8 qat"] = Predictor(out / "model-int8.xml",
                                                options=RuntimeOptions("openvino", "fp32", "cpu", cfg.threads))
            if cfg.compare:
                preds["after int8 ptq"] = Predictor(model, calibration=seen[:CALIBRATION_FRAMES],
                                                    options=RuntimeOptions("openvino", "int8", "cpu", cfg.threads))
        if cfg.compare:
            frame = np.random.default_rng(cfg.seed).integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
            first = preds["before"]
            report["speed"] = {"runtime": f"{first.options.backend} {first.options.precision}", "threads":
                               torch.get_num_threads(), "frame": cfg.frame_size,
                               **interleaved_ms(preds, frame, cfg.bench_runs)}
            report["speedup"] = round(report["speed"]["before"]["median_ms"] / report["speed"]["after"]["median_ms"], 3)
        in_sample = bool(held_out) and held_out[0] is seen[0]  # one frame only: scored on what was fitted on
        report["agreement"] = _agreement(preds["before"], preds["after"], held_out, in_sample)
        if cfg.qat:  # the int8 models against the float32 model they were quantised from
            reference = Predictor(model, options=RuntimeOptions("torch", "fp32", "cpu", cfg.threads))
            try:
                for key in (k for k in ("after int8 qat", "after int8 ptq") if k in preds):
                    report["qat"]["agreement " + key.split()[-1]] = _agreement(reference, preds[key], held_out,
                                                                               in_sample)
            finally:
                reference.close()
    finally:
        for p in preds.values():
            p.close()
    report["path"] = str(target)
    write_text(out / "report.json", json.dumps(report, indent=1))
    return report
