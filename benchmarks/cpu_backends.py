"""Every CPU backend x precision this machine runs natively, side by side, in interleaved rounds.

    PYTHONPATH=src python benchmarks/cpu_backends.py --threads 2 --out benchmarks/results/cpu-backends.json

For each variant (the fast preset, the study's fastest layout, dpt-hybrid-kitti: random weights, the
speed does not depend on them) one Predictor per runtime is built first (conversions and int8
calibration outside the timing); then ``--rounds`` rounds time each runtime's whole online step on a
375x1242 frame (resize, normalise, network, resize back) and the network alone, in turn, so load
changes hit every runtime alike. Accuracy: median and max relative depth error against torch fp32 on
synthetic driving frames. ``auto`` is timed as what it resolves to here, and the fast preset's
``fastdpt video`` pipeline runs with torch fp32 and with auto.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

VARIANTS = ["fast-effb0-f64-192x640", "effb0.h0-1.heads12.performer.f256.kitti@192x640", "dpt-hybrid-kitti"]
FRAME = (375, 1242)


def main() -> None:
    import fastdpt
    from fastdpt.bench import all_runtimes, environment
    from fastdpt.data.synthetic import sample_frames
    from fastdpt.predict import Predictor
    from fastdpt.runtime import RuntimeOptions, matrix_features

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="timed steps a runtime a round")
    ap.add_argument("--variants", nargs="*", default=VARIANTS)
    ap.add_argument("--out", default="benchmarks/results/cpu-backends.json")
    ap.add_argument("--no-video", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames = sample_frames(4, FRAME, seed=3)
    calibration = sample_frames(8, FRAME, seed=1)
    runtimes = all_runtimes("cpu")
    auto, choice = RuntimeOptions("auto", "auto", "cpu", args.threads).resolve(calibration=True)
    rows = []
    for name in args.variants:
        model = fastdpt.create_model(name).eval()
        preds = {}
        for b, p in runtimes:
            t0 = time.perf_counter()
            preds[f"{b} {p}"] = Predictor(model, backend=b, precision=p, threads=args.threads,
                                          calibration=calibration if p == "int8" else None)
            preds[f"{b} {p}"].predict(frames[0])  # conversion / quantisation / first run
            print(f"{name} {b} {p}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
        ref = [preds["torch fp32"].predict(f).depth for f in frames]
        acc = {}
        for k, pr in preds.items():
            rel = [np.abs(pr.predict(f).depth - r) / np.maximum(np.abs(r), 1e-6) for f, r in zip(frames, ref)]
            acc[k] = (float(np.median(np.concatenate([x.ravel() for x in rel]))), float(max(x.max() for x in rel)))
        step = {k: [] for k in preds}
        net = {k: [] for k in preds}
        xs = {k: pr.transforms.preprocess(frames[0]) for k, pr in preds.items()}
        for _ in range(args.rounds):
            for k, pr in preds.items():
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    pr.predict(frames[0])
                    step[k].append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    pr.backend(xs[k])
                    net[k].append((time.perf_counter() - t0) * 1000)
        base = statistics.median(step["torch fp32"])
        for k in preds:
            med = statistics.median(step[k])
            rows.append({"variant": name, "runtime": k, "auto": k == f"{auto.backend} {auto.precision}",
                         "step_ms": round(med, 2), "step_min_ms": round(min(step[k]), 2),
                         "step_max_ms": round(max(step[k]), 2), "net_ms": round(statistics.median(net[k]), 2),
                         "speedup_vs_torch_fp32": round(base / med, 3), "median_rel_err": round(acc[k][0], 6),
                         "max_rel_err": round(acc[k][1], 4)})
            print(json.dumps(rows[-1]), flush=True)
        for pr in preds.values():
            pr.close()
    video = []
    if not args.no_video:
        from online import make_clip

        from fastdpt.stream import VideoSink, VideoSource, run_stream

        model = fastdpt.create_model(VARIANTS[0]).eval()
        with tempfile.TemporaryDirectory() as tmp:
            clip = make_clip(Path(tmp) / "clip.mp4", frames=60)
            for b, p in (("torch", "fp32"), (auto.backend, auto.precision)):
                pred = Predictor(model, backend=b, precision=p, threads=args.threads,
                                 calibration=calibration if p == "int8" else None)
                pred.predict(frames[0])
                stats = run_stream(VideoSource(str(clip)), pred, VideoSink(Path(tmp) / f"out-{b}.mp4", 10.0))
                video.append({"runtime": f"{b} {p}", "fps": round(stats.summary()["effective_fps"], 2)})
                print(json.dumps(video[-1]), flush=True)
    out = {"environment": environment(), "cpu_features": matrix_features(), "threads": args.threads,
           "auto": choice.line() if choice else None, "frame": f"{FRAME[0]}x{FRAME[1]}", "rounds": args.rounds,
           "runs": args.runs, "rows": rows, "video": video, "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(markdown(out))


def markdown(r: dict) -> str:
    lines = [f"{r['environment']['processor']} ({', '.join(r['cpu_features'])}), {r['threads']} threads, torch "
             f"{r['environment']['torch']}; frames {r['frame']}; {r['rounds']} interleaved rounds of {r['runs']} steps; "
             f"{r['auto']}.", "",
             "| variant | runtime | whole step ms (min-max) | network ms | vs torch fp32 | median / max rel. error |",
             "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| `{x['variant']}` | {x['runtime']}{' (auto)' if x['auto'] else ''} | {x['step_ms']} "
                     f"({x['step_min_ms']}-{x['step_max_ms']}) | {x['net_ms']} | {x['speedup_vs_torch_fp32']}x | "
                     f"{x['median_rel_err']:.2g} / {x['max_rel_err']:.2g} |")
    if r["video"]:
        lines += ["", "`fastdpt video` pipeline, fast preset, 60 frames 375x1242: " +
                  ", ".join(f"{v['runtime']} {v['fps']} FPS" for v in r["video"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
