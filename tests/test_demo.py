import json

import cv2
import numpy as np
import pytest

pytest.importorskip("lightning")

from fastdpt.demo import run_demo  # noqa: E402
from fastdpt.errors import FastDPTError  # noqa: E402


def test_demo_end_to_end(tmp_path):
    """The README's main job, shrunk: small frames and a few seconds of training."""
    lines = []
    # a fixed step budget (30: about 45 s on 2 cores) at which the model must beat the best constant
    summary = run_demo(tmp_path / "demo", steps=30, drives=2, frames=12, size=(96, 320), say=lines.append)
    out = tmp_path / "demo"
    s = json.loads((out / "summary.json").read_text())
    assert s == json.loads(json.dumps(summary))
    assert s["model"] == "effb0.h0-1.heads12.softmax.f64.m0.01_0.0125@128x416"
    assert s["test_metrics"]["images"] == 2 and s["stream"]["frames_out"] == 12
    cap = cv2.VideoCapture(str(out / "demo.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 12 and len(s["pngs"]) >= 3
    assert any("demo.mp4" in line for line in lines)
    # every phase says where it is, and the score is put beside the best constant depth
    assert [p for p in ("[1/4]", "[2/4]", "[3/4]", "[4/4]") if any(line.startswith(p) for line in lines)] == \
        ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert any("step 30/30" in line for line in lines) and any("best constant" in line for line in lines)
    from fastdpt.data.kitti import read_split

    n = len(read_split(out / "data" / "splits" / "test_files_with_gt.txt"))
    scoring = lines[next(i for i, line in enumerate(lines) if line.startswith("[3/4]")) + 1:]
    assert n > s["test_metrics"]["images"] and f"  {n}/{n} frames" in scoring  # annotated or not, every line counts
    assert s["steps"] == 30 and s["best_constant"]["images"] == 2
    # what the demo promises, against a computation of its own: the best constant depth of the held-out
    # drive's annotations (Garg crop, 1e-3..80 m, AbsRel averaged over images), found by search
    from fastdpt.io import read_depth_png

    gts = []
    for e in read_split(out / "data" / "splits" / "test_files_with_gt.txt"):
        found = [out / "data" / "data_depth_annotated" / sub / e.gt for sub in ("", "train", "val")] if e.gt else []
        path = next((p for p in found if p.is_file()), None)  # KITTI keeps annotations under train/ and val/
        if path is None:
            continue
        g = read_depth_png(path)
        h, w = g.shape
        crop = np.zeros_like(g, dtype=bool)
        crop[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = True
        gts.append(g[crop & (g > 1e-3) & (g < 80)].astype(np.float64))
    consts = np.geomspace(1, 80, 4000)
    best = min(np.mean([np.mean(np.abs(g - c) / g) for g in gts]) for c in consts)
    assert len(gts) == 2 and s["best_constant"]["abs_rel"] == pytest.approx(best, rel=2e-3)
    assert s["test_metrics"]["abs_rel"] < 0.95 * best and s["beats_best_constant"]
    with pytest.raises(FastDPTError, match="--force"):
        run_demo(out, steps=2, drives=2, frames=12, size=(96, 320), say=lines.append)
