import json

import cv2
import pytest

pytest.importorskip("lightning")

from fastdpt.demo import run_demo  # noqa: E402
from fastdpt.errors import FastDPTError  # noqa: E402


def test_demo_end_to_end(tmp_path):
    """The README's main job, shrunk: small frames and a few seconds of training."""
    lines = []
    summary = run_demo(tmp_path / "demo", steps=4, drives=2, frames=12, size=(96, 320), say=lines.append)
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
    assert any("step 4/4" in line for line in lines) and any("best constant" in line for line in lines)
    from fastdpt.data.kitti import read_split

    n = len(read_split(out / "data" / "splits" / "test_files_with_gt.txt"))
    scoring = lines[next(i for i, line in enumerate(lines) if line.startswith("[3/4]")) + 1:]
    assert n > s["test_metrics"]["images"] and f"  {n}/{n} frames" in scoring  # annotated or not, every line counts
    assert s["steps"] == 4 and s["best_constant"]["images"] == 2
    assert s["beats_best_constant"] == (s["test_metrics"]["abs_rel"] < s["best_constant"]["abs_rel"])
    with pytest.raises(FastDPTError, match="--force"):
        run_demo(out, steps=2, drives=2, frames=12, size=(96, 320), say=lines.append)
