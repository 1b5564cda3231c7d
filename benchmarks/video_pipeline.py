"""Where the fast preset's ``fastdpt video`` time goes on this CPU, and what bounds its FPS.

    python benchmarks/video_pipeline.py --threads 2 --out benchmarks/results/video-pipeline.json

One predictor of the fast preset or ``--variant`` (``auto``, as ``fastdpt video`` runs it; random
weights, the speed does not depend on them) and one synthetic 60-frame 375x1242 clip. Timed, in turn: ``predict()`` alone over the decoded
frames; the stream pipeline with no output; with the side-by-side H.264 video that ``fastdpt video``
writes; with the depth alone; with OpenCV's mp4v; the throughput mode (``--batch 2``); and with the colour
map computed in torch as on a GPU (what a CPU predictor did before it used NumPy's). Then
OpenVINO's own per-layer counters (``PERF_COUNT``) for the network at the resolved precision, summed
by kernel kind, with the arithmetic rate of the largest matrix products: if they already run near
what the cores can do, only a smaller network or int8 makes the video faster, not the pipeline. Last,
the network alone in OpenVINO's latency and throughput modes: the ceiling of any pipeline around it.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

VARIANT = "fast-effb0-f64-192x640"


def layer_profile(om, model, precision: str, threads: int, runs: int = 10) -> dict:
    """OpenVINO's per-layer times of the network (``om``: ``model`` converted), summed by (layer type, kernel)."""
    from fastdpt.runtime.openvino import core

    hint = "bf16" if precision == "bf16" else "f32"
    compiled = core().compile_model(om, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                                "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, *model.config.input_size), dtype=np.float32)
    for _ in range(3):
        request.infer({0: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append((time.perf_counter() - t0) * 1000)
    kinds: collections.Counter = collections.Counter()
    layers = []
    for p in request.profiling_info:
        us = p.real_time.total_seconds() * 1e6
        kinds[f"{p.node_type} {p.exec_type}"] += us
        layers.append((us, p.node_name))
    total = sum(kinds.values())
    return {"network_ms": round(float(np.median(times)), 2), "precision_hint": hint,
            "by_kind": [{"kind": k, "ms": round(v / 1000, 2), "share": round(v / total, 3)}
                        for k, v in kinds.most_common(8)],
            "largest": [{"layer": n, "ms": round(us / 1000, 2)} for us, n in sorted(layers, reverse=True)[:6]]}


def network_ceiling(om, model, precision: str, threads: int, frames: int = 60) -> dict:
    """Frames a second of the network alone, nothing else running: OpenVINO's latency mode (one request
    on ``threads`` threads, what fastdpt runs) and its throughput mode (``threads`` streams of one thread,
    requests in flight together). No pipeline around it can beat the higher of the two."""
    import openvino as ov

    from fastdpt.runtime.openvino import core

    hint = "bf16" if precision == "bf16" else "f32"
    x = np.random.default_rng(0).random((1, 3, *model.config.input_size), dtype=np.float32)
    out = {}
    for mode, extra in (("latency", {}), ("throughput", {"NUM_STREAMS": threads})):
        compiled = core().compile_model(om, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": mode.upper(),
                                                    "INFERENCE_NUM_THREADS": threads, **extra})
        q = ov.AsyncInferQueue(compiled, int(compiled.get_property("NUM_STREAMS")))
        for _ in range(5):
            q.start_async({0: x})
        q.wait_all()
        t0 = time.perf_counter()
        for _ in range(frames):
            q.start_async({0: x})
        q.wait_all()
        out[f"{mode}_fps"] = round(frames / (time.perf_counter() - t0), 1)
    return out


def mlp_rate(model, ms: float) -> float:
    """GFLOP/s of one transformer MLP projection (tokens x width x 4*width) that took ``ms``."""
    from fastdpt.transforms import network_size

    h, w = network_size(*model.config.input_size, model.config)
    tokens = (h // 16) * (w // 16)
    width = model.encoder.blocks[0].mlp.fc1.in_features
    hidden = model.encoder.blocks[0].mlp.fc1.out_features
    return 2 * tokens * width * hidden / (ms / 1000) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default=VARIANT, help="a preset or canonical name (random weights)")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/video-pipeline.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import fastdpt
    from fastdpt.bench import environment
    from fastdpt.predict import Predictor
    from fastdpt.runtime import matrix_features
    from fastdpt.stream import VideoSink, VideoSource, run_stream
    from fastdpt.viz import DeviceColorizer
    from online import make_clip

    model = fastdpt.create_model(args.variant).eval()
    pred = Predictor(model, backend="auto", precision="auto", threads=args.threads)
    print(pred.choice.line() if pred.choice else "", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", frames=args.frames)
        frames = list(VideoSource(str(clip)))
        pred.predict(frames[0])
        t0 = time.perf_counter()
        pred.predict_batch(frames[:2])  # --batch's runner built here, not in its timed row (once a run)
        first_batch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for f in frames:
            pred.predict(f)
        alone = (time.perf_counter() - t0) / len(frames)
        rows.append({"pipeline": "predict() alone, no threads", "fps": round(1 / alone, 2), "ms": round(alone * 1000, 1)})
        print(json.dumps(rows[-1]), flush=True)
        cases = [("stream, no output", None, 1), ("stream + side-by-side H.264 (fastdpt video)", {}, 1),
                 ("stream + depth-only H.264 (--pred-only)", {"side_by_side": False}, 1),
                 ("stream + side-by-side mp4v (--codec mp4v)", {"codec": "mp4v"}, 1),
                 ("stream + side-by-side H.264, --batch 2", {}, 2),
                 ("stream + side-by-side H.264, colour map in torch (the GPU's path; the CPU's before 2026-12-02)",
                  {}, 1)]
        for i, (label, sink, batch) in enumerate(cases):
            out = VideoSink(Path(tmp) / f"out{i}.mp4", 10.0, **sink) if sink is not None else None
            if "colour map in torch" in label:  # the same colours, computed as on a GPU
                pred.colorizer = lambda cmap="Spectral_r": DeviceColorizer(cmap)
            stats = run_stream(VideoSource(str(clip)), pred, out, flicker=False, batch_size=batch)
            rows.append({"pipeline": label, "fps": round(stats.summary()["effective_fps"], 2),
                         "median_latency_ms": round(float(np.median(stats.latencies_ms)), 1)})
            print(json.dumps(rows[-1]), flush=True)
    pred.close()
    profile = None
    if pred.options.backend == "openvino":
        from fastdpt.runtime.openvino import convert

        om = convert(model, model.config.input_size)  # once, for both
        profile = layer_profile(om, model, pred.options.precision, args.threads)
        fc1 = [r["ms"] for r in profile["largest"] if r["layer"].endswith("mlp/fc1/Add")]
        if fc1:
            profile["mlp_fc1_gflops"] = round(mlp_rate(model, fc1[0]), 1)
        profile["network_alone"] = network_ceiling(om, model, pred.options.precision, args.threads)
        print(json.dumps(profile, indent=1), flush=True)
    result = {"environment": environment(), "cpu_features": matrix_features(), "threads": args.threads,
              "variant": args.variant, "runtime": f"{pred.options.backend} {pred.options.precision}",
              "frame": "375x1242", "frames": args.frames, "rows": rows, "network_profile": profile,
              "first_batch_s": round(first_batch_s, 2),
              "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
