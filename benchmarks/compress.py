"""Compression on the speed/accuracy frontier: each technique alone and combined, in one run.

    python benchmarks/compress.py --threads 2 --demo .bench/cpu-accuracy/demo --steps 150

1. A trained fast student: ``fastdpt demo``'s model (the fast preset's 128x416 layout trained on three
   synthetic drives; trained here when ``--demo`` holds none). Each compression is made with
   ``fastdpt.compress`` (pruning heads / MLP / decoder alone, clustering alone, everything combined
   and recovered by training on the demo's drives, and that plus clustering); every model is then
   scored on the held-out drive (BTS protocol, AbsRel) and timed (whole online step, ``auto`` runtime,
   375x1242 frames) in interleaved rounds in the same process.
2. A DPT-Hybrid-sized variant (``dpt-hybrid-kitti``'s layout, random weights: no trained one exists
   here, so speed and size only): the combined pruning and clustering, timed the same way.
3. Quantisation-aware int8 (``--qat-steps``; ``--only-qat`` runs this part alone and adds it to the
   existing results): ``fastdpt compress --qat int8`` of the student, and of the student pruned by
   ``--qat-prune`` and recovered by training, each beside post-training int8 (OpenVINO + NNCF) of the
   same model calibrated on the same frames (the training drives' frames; the held-out drive is never
   seen), all scored on the held-out drive and timed interleaved against the uncompressed student on
   ``auto``.
4. A distilled student (``--distilled RUN``, a ``fastdpt distill`` run folder; runs alone and adds
   ``distilled`` to the results): pruned by each ``--distilled-prune`` plan, recovered by distillation
   from itself on the run's own unlabelled frames (``fastdpt compress --recover distill``), optionally
   made int8 by quantisation-aware training and, beside it, post-training int8 on the same calibration
   frames; all scored against the ground truth of the run's held-out split and timed interleaved
   against the student on ``auto``. A recovery already in ``--work`` for the same plan is reused.

    python benchmarks/compress.py --threads 2 --distilled .bench/distill/distill-3drives-extra15 \
        --distilled-steps 800 --distilled-qat-steps 60 --work .bench/compress-distilled
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

COMBINED = "heads=0.5,mlp=0.5,decoder=0.5"
DISTILLED_PRUNE = "heads=0.5,mlp=0.75,decoder=0.5"


def main() -> None:
    from fastdpt.bench import environment, interleaved_ms
    from fastdpt.data.kitti import fits_kb_crop, read_split
    from fastdpt.demo import run_demo
    from fastdpt.evaluation import Protocol, evaluate
    from fastdpt.io import read_image
    from fastdpt.predict import Predictor
    from fastdpt.runtime import RuntimeOptions, matrix_features

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--demo", default=".bench/cpu-accuracy/demo", help="a fastdpt demo folder (made if absent)")
    ap.add_argument("--demo-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=150, help="recovery steps of the combined pruning")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--work", default=".bench/compress")
    ap.add_argument("--out", default="benchmarks/results/compress.json")
    ap.add_argument("--no-big", action="store_true", help="skip the DPT-Hybrid-sized variant")
    ap.add_argument("--qat-steps", type=int, default=60, help="quantisation-aware fine-tuning steps")
    ap.add_argument("--qat-prune", default="heads=0.25,mlp=0.25,decoder=0.25", help="pruning before the combined QAT")
    ap.add_argument("--only-qat", action="store_true", help="run part 3 alone, adding it to --out")
    ap.add_argument("--distilled", default=None,
                    help="part 4 alone, added to --out: a `fastdpt distill` run folder whose student is pruned by each "
                    "--distilled-prune plan, recovered by distillation from itself on the run's own frames, and "
                    "scored on the run's ground-truth split")
    ap.add_argument("--distilled-prune", action="append", default=None,
                    help=f"pruning plan of part 4 (repeatable; default {DISTILLED_PRUNE})")
    ap.add_argument("--distilled-steps", type=int, default=900, help="recovery steps of part 4")
    ap.add_argument("--distilled-lr", type=float, default=5e-4, help="recovery learning rate of part 4")
    ap.add_argument("--distilled-qat-steps", type=int, default=0,
                    help="part 4: also quantisation-aware int8 of each recovered model (this many steps, on the run's "
                    "frames) beside post-training int8 of it on the same calibration frames (0: neither)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.distilled:
        result = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        result["distilled"] = _distilled(Path(args.distilled), Path(args.work) / "distilled", args)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(markdown_distilled(result["distilled"]))
        return
    demo = Path(args.demo)
    if not (demo / "summary.json").is_file():
        run_demo(demo, steps=args.demo_steps, force=True)
    summary = json.loads((demo / "summary.json").read_text())
    ckpt, data = summary["checkpoint"], demo / "data"
    work = Path(args.work)
    if args.only_qat:
        result = json.loads(Path(args.out).read_text())
        result["qat"] = _qat(ckpt, data, work / "qat", args)
        result["qat_command"] = " ".join(sys.argv)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(markdown(result))
        return
    shutil.rmtree(work, ignore_errors=True)
    plans = {"prune heads 0.5": dict(prune="heads=0.5"), "prune mlp 0.5": dict(prune="mlp=0.5"),
             "prune decoder 0.5": dict(prune="decoder=0.5"), "cluster 16": dict(cluster=16),
             f"prune {COMBINED} + train {args.steps}": dict(prune=COMBINED, recover="train", data_root=str(data),
                                                          steps=args.steps, lr=3e-4)}
    # the recovered model clustered in turn (its own checkpoint in, no second recovery)
    plans[f"prune {COMBINED} + train {args.steps} + cluster 16"] = dict(
        cluster=16, checkpoint=f"@prune {COMBINED} + train {args.steps}")
    models = {"uncompressed": ckpt}
    reports = {}
    for i, (label, plan) in enumerate(plans.items()):
        plan = dict(plan)
        src = plan.pop("checkpoint", ckpt)
        src = models[src[1:]] if src.startswith("@") else src
        r = _compress_cli(src, work / f"m{i}", args.threads, plan)
        models[label], reports[label] = r["path"], r
        print(label, json.dumps({k: r[k] for k in ("before", "after")}), flush=True)
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    size = read_image(data / "raw" / test[0].rgb).shape[:2]
    protocol = Protocol("garg", kb_crop=fits_kb_crop(*size))
    options = RuntimeOptions("auto", "auto", "cpu", args.threads)
    preds = {k: Predictor(p, options=options) for k, p in models.items()}
    frame = np.random.default_rng(0).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    speed = interleaved_ms(preds, frame, args.rounds)
    rows = []
    for label, pred in preds.items():
        m = evaluate(pred, test, data / "raw", data / "data_depth_annotated", protocol)
        r = reports.get(label)
        stats = r["after"] if r else next(iter(reports.values()))["before"]  # the first plan starts from ckpt
        rows.append({"model": label, "params": stats["params"], "macs": stats["macs"],
                     "file_mb": round(stats["file_bytes"] / 2**20, 2),
                     "palettised_mb": round(stats["palettised_bytes"] / 2**20, 2) if "palettised_bytes" in stats else None,
                     "step_ms": speed[label]["median_ms"], "step_min_ms": speed[label]["min_ms"],
                     "step_max_ms": speed[label]["max_ms"], "abs_rel": round(m["abs_rel"], 4), "d1": round(m["d1"], 4)})
        print(json.dumps(rows[-1]), flush=True)
    runtime = f"{next(iter(preds.values())).options.backend} {next(iter(preds.values())).options.precision}"
    for p in preds.values():
        p.close()
    _against_first(rows)
    big = [] if args.no_big else _big(work, args.threads, args.rounds)
    qat = _qat(ckpt, data, work / "qat", args)
    result = {"qat": qat, "environment": environment(), "cpu_features": matrix_features(), "threads": args.threads,
              "runtime": runtime, "student": summary["model"], "student_steps": summary["steps"],
              "test_frames": len(test), "rows": rows, "big": big, "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


def _big(work: Path, threads: int, rounds: int) -> list[dict]:
    """dpt-hybrid-kitti's layout with random weights: speed and size of the combined compressions."""
    import fastdpt
    from fastdpt.bench import interleaved_ms
    from fastdpt.predict import Predictor
    from fastdpt.runtime import RuntimeOptions

    torch.manual_seed(0)
    ckpt = fastdpt.save_checkpoint(fastdpt.create_model("dpt-hybrid-kitti"), work / "big" / "dpt-hybrid.safetensors")
    plans = {"prune heads 0.5": dict(prune="heads=0.5"), "prune mlp 0.5": dict(prune="mlp=0.5"),
             f"prune {COMBINED}": dict(prune=COMBINED), f"prune {COMBINED} + cluster 16": dict(prune=COMBINED, cluster=16)}
    models, reports = {"uncompressed (random weights)": str(ckpt)}, {}
    for i, (label, plan) in enumerate(plans.items()):
        r = _compress_cli(str(ckpt), work / "big" / f"m{i}", threads, plan)
        models[label], reports[label] = r["path"], r
    preds = {k: Predictor(p, options=RuntimeOptions("auto", "auto", "cpu", threads)) for k, p in models.items()}
    frame = np.random.default_rng(0).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    speed = interleaved_ms(preds, frame, rounds)
    for p in preds.values():
        p.close()
    rows = []
    first = next(iter(reports.values()))["before"]
    for label in models:
        stats = reports[label]["after"] if label in reports else first
        rows.append({"model": label, "params": stats["params"], "macs": stats["macs"],
                     "file_mb": round(stats["file_bytes"] / 2**20, 2),
                     "palettised_mb": round(stats["palettised_bytes"] / 2**20, 2) if "palettised_bytes" in stats else None,
                     "step_ms": speed[label]["median_ms"], "step_min_ms": speed[label]["min_ms"],
                     "step_max_ms": speed[label]["max_ms"]})
        rows[-1]["speedup"] = round(rows[0]["step_ms"] / rows[-1]["step_ms"], 3)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _qat(ckpt: str, data: Path, work: Path, args) -> dict:
    """Part 3: quantisation-aware against post-training int8 on the same calibration frames."""
    from fastdpt.bench import interleaved_ms
    from fastdpt.compress.qat import CALIBRATION_FRAMES
    from fastdpt.compress.run import _agreement
    from fastdpt.data.kitti import fits_kb_crop, read_split
    from fastdpt.evaluation import Protocol, evaluate
    from fastdpt.io import read_image
    from fastdpt.predict import Predictor
    from fastdpt.runtime import RuntimeOptions

    shutil.rmtree(work, ignore_errors=True)
    train = read_split(data / "splits" / "train_files_with_gt.txt")
    drives = sorted({str((data / "raw" / e.rgb).parent) for e in train})
    plans = {"qat int8": dict(qat="int8"),
             f"prune {args.qat_prune} + train {args.steps} + qat int8": dict(
                 prune=args.qat_prune, recover="train", data_root=str(data), steps=args.steps, lr=3e-4, qat="int8")}
    seen, held = _qat_frames(ckpt, drives)
    auto = RuntimeOptions("auto", "auto", "cpu", args.threads)
    preds = {"uncompressed": Predictor(ckpt, options=auto)}
    reports = {}
    for i, (label, plan) in enumerate(plans.items()):
        r = _compress_cli(ckpt, work / f"q{i}", args.threads, {**plan, "qat_steps": args.qat_steps},
                          frames=drives)
        reports[label] = r
        if "prune" in plan:
            preds[label.replace(" + qat int8", "")] = Predictor(r["path"], options=auto)
        preds[label] = Predictor(str(work / f"q{i}" / "model-int8.xml"), backend="openvino")
        preds[label.replace("qat", "ptq")] = Predictor(r["path"], options=RuntimeOptions("openvino", "int8", "cpu",
                                                                                          args.threads),
                                                       calibration=seen[:CALIBRATION_FRAMES])
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    protocol = Protocol("garg", kb_crop=fits_kb_crop(*read_image(data / "raw" / test[0].rgb).shape[:2]))
    frame = np.random.default_rng(0).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    speed = interleaved_ms(preds, frame, args.rounds)
    fp32 = Predictor(ckpt, options=RuntimeOptions("torch", "fp32", "cpu", args.threads))
    rows = []
    for label, pred in preds.items():
        m = evaluate(pred, test, data / "raw", data / "data_depth_annotated", protocol)
        runtime = "openvino int8 (quantisation-aware file)" if "qat" in label else \
            f"{pred.options.backend} {pred.options.precision}"
        rows.append({"model": label, "runtime": runtime,
                     "step_ms": speed[label]["median_ms"], "step_min_ms": speed[label]["min_ms"],
                     "step_max_ms": speed[label]["max_ms"], "abs_rel": round(m["abs_rel"], 4), "d1": round(m["d1"], 4),
                     "vs_student_fp32": _agreement(fp32, pred, held)["abs_rel_vs_original"]})
        print(json.dumps(rows[-1]), flush=True)
    for p in [*preds.values(), fp32]:
        p.close()
    _against_first(rows)
    return {"rows": rows, "qat_steps": args.qat_steps, "calibration_frames": CALIBRATION_FRAMES,
            "kept_steps": {k: r["qat"]["kept_step"] for k, r in reports.items()},
            "validation_abs_rel": {k: r["qat"]["validation_abs_rel"] for k, r in reports.items()},
            "qat_s": {k: r["times"].get("qat_s") for k, r in reports.items()}}


def _distilled(run: Path, work: Path, args) -> dict:
    """Part 4: a distilled student (``fastdpt distill``'s run folder) pruned and recovered by distillation from
    itself on the run's unlabelled frames, against the student: ground truth of the run's held-out split
    (never seen by the student or the recovery), whole online step on ``auto``, interleaved."""
    from fastdpt.bench import environment, interleaved_ms
    from fastdpt.compress.qat import CALIBRATION_FRAMES
    from fastdpt.data.kitti import read_split
    from fastdpt.evaluation import Protocol, evaluate
    from fastdpt.predict import Predictor
    from fastdpt.runtime import RuntimeOptions, matrix_features

    cfg = json.loads((run / "distill.json").read_text())["config"]
    student = run / "student.safetensors"
    if not student.is_file() or not cfg.get("gt_split"):
        raise SystemExit(f"{run} holds no finished distillation with a ground-truth split (--gt-root/--gt-split)")
    options = RuntimeOptions("auto", "auto", "cpu", args.threads)
    int8 = RuntimeOptions("openvino", "int8", "cpu", args.threads)
    preds = {"distilled student": Predictor(student, options=options)}
    reports = {}
    for i, plan in enumerate(args.distilled_prune or [DISTILLED_PRUNE]):
        label = f"prune {plan} + distil {args.distilled_steps}"
        todo = {"prune": plan, "recover": "distill", "steps": args.distilled_steps, "lr": args.distilled_lr,
                "max_frames": 10**6}
        r = _compress_cli_once(str(student), work / f"d{i}", args.threads, todo, cfg["frames"])
        preds[label], reports[label] = Predictor(r["path"], options=options), r
        if args.distilled_qat_steps:
            q = _compress_cli_once(r["path"], work / f"d{i}-qat", args.threads,
                                   {"qat": "int8", "qat_steps": args.distilled_qat_steps}, cfg["frames"])
            xml = work / f"d{i}-qat" / "model-int8.xml"
            preds[label + " + qat int8"] = Predictor(str(xml), backend="openvino")
            reports[label + " + qat int8"] = {**q, "after": {**q["after"], "file_bytes": xml.with_suffix(".bin").stat().st_size}}
            # post-training int8 of the same model on the same calibration frames as the QAT run's
            seen, _ = _qat_frames(r["path"], cfg["frames"])
            preds[label + " + ptq int8"] = Predictor(r["path"], options=int8, calibration=seen[:CALIBRATION_FRAMES])
            reports[label + " + ptq int8"] = r
    frame = np.random.default_rng(0).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    speed = interleaved_ms(preds, frame, args.rounds)
    test = read_split(cfg["gt_split"])
    rows = []
    for label, pred in preds.items():
        m = evaluate(pred, test, cfg["gt_raw_root"], cfg["gt_root"], Protocol())
        stats = reports[label]["after"] if label in reports else next(iter(reports.values()))["before"]
        rows.append({"model": label, "runtime": "openvino int8 (quantisation-aware file)" if label.endswith("qat int8")
                     else f"{pred.options.backend} {pred.options.precision}",
                     "params": stats["params"], "macs": stats["macs"],
                     "file_mb": round(stats["file_bytes"] / 2**20, 2), "step_ms": speed[label]["median_ms"],
                     "step_min_ms": speed[label]["min_ms"], "step_max_ms": speed[label]["max_ms"],
                     "abs_rel": round(m["abs_rel"], 4), "d1": round(m["d1"], 4), "rmse": round(m["rmse"], 3)})
        if label in reports and "recover" in reports[label] and not label.endswith("int8"):
            rows[-1]["agreement_with_student"] = reports[label]["recover"]["agreement_with_teacher"]
            rows[-1]["recover_s"] = reports[label]["times"].get("recover_s")
        if label.endswith("qat int8"):
            rows[-1]["qat_s"] = reports[label]["times"].get("qat_s")
        print(json.dumps(rows[-1]), flush=True)
    runtime = f"{next(iter(preds.values())).options.backend} {next(iter(preds.values())).options.precision}"
    for p in preds.values():
        p.close()
    _against_first(rows)
    return {"rows": rows, "run": str(run), "frames": cfg["frames"], "steps": args.distilled_steps,
            "lr": args.distilled_lr, "qat_steps": args.distilled_qat_steps, "calibration_frames": CALIBRATION_FRAMES,
            "test_frames": len(test), "runtime": runtime, "environment": environment(),
            "cpu_features": matrix_features(), "threads": args.threads, "command": " ".join(sys.argv)}


def _qat_frames(checkpoint: str, sources) -> tuple[list, list]:
    """The frames ``fastdpt compress --qat`` takes from ``sources``, split as it splits them: calibration and
    fine-tuning from the first, the last held out for its agreement figure."""
    from fastdpt.compress.config import CompressConfig
    from fastdpt.compress.run import AGREEMENT_FRAMES, QAT_FRAMES, _frames

    every = _frames(CompressConfig(checkpoint=checkpoint, out="x", qat="int8", frames=tuple(sources)),
                    AGREEMENT_FRAMES + QAT_FRAMES)
    return every[:-AGREEMENT_FRAMES], every[-AGREEMENT_FRAMES:]


def _against_first(rows: list[dict]) -> None:
    """Each row's speed-up and AbsRel change against the first row (the uncompressed model)."""
    for r in rows:
        r["speedup"] = round(rows[0]["step_ms"] / r["step_ms"], 3)
        r["abs_rel_change"] = round(r["abs_rel"] / rows[0]["abs_rel"] - 1, 4)


def _speed_and_accuracy(x: dict) -> str:
    """A row's step time (min-max), speed-up, AbsRel (change) and d1 cells."""
    return (f"{x['step_ms']} ({x['step_min_ms']}-{x['step_max_ms']}) | {x['speedup']}x | "
            f"{x['abs_rel']} ({x['abs_rel_change'] * 100:+.1f} %) | {x['d1']}")


def markdown_distilled(d: dict) -> str:
    e = d["environment"]
    lines = [f"{e['processor']} ({', '.join(d['cpu_features']) or 'no bf16/int8 matrix units'}), {d['threads']} threads, "
             f"torch {e['torch']}, runtime {d['runtime']}; the student of `{d['run']}`, {d['test_frames']} held-out "
             "frames with ground truth; whole step on 375x1242 frames, median of interleaved rounds (min-max).", "",
             "| model | runtime | params M | GMACs | file MB | step ms (min-max) | speed-up | AbsRel (change) | d1 | RMSE |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x in d["rows"]:
        lines.append(f"| {x['model']} | {x['runtime']} | {x['params'] / 1e6:.2f} | {x['macs'] / 1e9:.2f} | {x['file_mb']} | "
                     f"{_speed_and_accuracy(x)} | {x['rmse']} |")
    return "\n".join(lines) + "\n"


def _compress_cli_once(checkpoint: str, out: Path, threads: int, plan: dict, frames: list) -> dict:
    """``_compress_cli``, or the report of an earlier run in ``out`` of the same checkpoint, plan and frames
    (a recovery takes tens of minutes: a rerun of the benchmark times and scores again without it)."""
    done = out / "report.json"
    if done.is_file():
        report = json.loads(done.read_text())
        c = report["config"]
        if c["checkpoint"] == str(checkpoint) and c["frames"] == list(frames) and all(
                str(c[k]) == str(v) for k, v in plan.items()):
            print(f"reusing {out} (same checkpoint, plan and frames)", flush=True)
            return report
    shutil.rmtree(out, ignore_errors=True)
    return _compress_cli(checkpoint, out, threads, plan, frames)


def _compress_cli(checkpoint: str, out: Path, threads: int, plan: dict, frames: list | None = None) -> dict:
    """One `fastdpt compress` run, as a user runs it (its own process), read back from its report."""
    cmd = [sys.executable, "-m", "fastdpt.cli", "compress", str(checkpoint), "--out", str(out), "--threads", str(threads),
           "--bench-runs", "1", "--no-progress"]
    for f in frames or ():
        cmd += ["--frames", str(f)]
    for key, value in plan.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    print(" ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / "report.json").read_text())


def markdown(r: dict) -> str:
    e = r["environment"]
    lines = [f"{e['processor']} ({', '.join(r['cpu_features'])}), {r['threads']} threads, torch {e['torch']}, runtime "
             f"{r['runtime']}; student `{r['student']}` trained {r['student_steps']} steps by `fastdpt demo`, "
             f"{r['test_frames']} held-out frames (BTS protocol); whole step on 375x1242 frames, median of interleaved "
             "rounds (min-max).", "",
             "| model | params M | GMACs | file MB (palettised) | step ms (min-max) | speed-up | AbsRel (change) | d1 |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        pal = f" ({x['palettised_mb']})" if x["palettised_mb"] else ""
        lines.append(f"| {x['model']} | {x['params'] / 1e6:.2f} | {x['macs'] / 1e9:.2f} | {x['file_mb']}{pal} | "
                     f"{_speed_and_accuracy(x)} |")
    if r["big"]:
        lines += ["", "| DPT-Hybrid-sized | params M | GMACs | file MB (palettised) | step ms (min-max) | speed-up |",
                  "|---|---|---|---|---|---|"]
        for x in r["big"]:
            pal = f" ({x['palettised_mb']})" if x["palettised_mb"] else ""
            lines.append(f"| {x['model']} | {x['params'] / 1e6:.2f} | {x['macs'] / 1e9:.2f} | {x['file_mb']}{pal} | "
                         f"{x['step_ms']} ({x['step_min_ms']}-{x['step_max_ms']}) | {x['speedup']}x |")
    if r.get("qat"):
        q = r["qat"]
        lines += ["", f"Quantisation-aware ({q['qat_steps']} steps; kept step {q['kept_steps']}) against post-training "
                  f"int8 on the same {q['calibration_frames']} calibration frames:", "",
                  "| model | runtime | step ms (min-max) | speed-up | AbsRel (change) | d1 | AbsRel vs student fp32 |",
                  "|---|---|---|---|---|---|---|"]
        for x in q["rows"]:
            lines.append(f"| {x['model']} | {x['runtime']} | {_speed_and_accuracy(x)} | {x['vs_student_fp32']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
