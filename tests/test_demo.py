import json

import cv2
import pytest

pytest.importorskip("lightning")

from fastdpt.demo import run_demo  # noqa: E402
from fastdpt.errors import FastDPTError  # noqa: E402


def test_demo_end_to_end(tmp_path):
    """The README's main job, shrunk: small frames and a few seconds of training."""
    lines = []
    summary = run_demo(tmp_path / "demo", minutes=0.15, drives=2, frames=12, size=(96, 320), say=lines.append)
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
    with pytest.raises(FastDPTError, match="--force"):
        run_demo(out, minutes=0.1, drives=2, frames=12, size=(96, 320), say=lines.append)
