"""What a first-time user and a hostile tester met at the command line (issue 17): a slow start,
segfaults, a closed pipe that stopped a batch, a killed save that blocked a resume, a grid that was
too large or had bad options, a report that showed raw Markdown."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_EFF
from fastdpt.cli import app

runner = CliRunner()
FASTDPT = [sys.executable, "-m", "fastdpt.cli"]


def test_the_command_line_starts_without_torch():
    # `fastdpt --help` and one-line usage errors took 7 s+ because the CLI imported torch and timm
    code = ("import sys; import fastdpt.cli, fastdpt; "
            "print(sorted(m for m in ('torch', 'timm', 'lightning', 'ray', 'mlflow', 'onnxruntime', 'openvino') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    # nor does the model check that every model command makes first (a missing .xml took ~3 s to
    # report: the check imported the exported-file runtime, and with it torch)
    code = ("import sys; from fastdpt.cli.common import check_model\n"
            "for m in ('missing.xml', 'missing.onnx', 'missing.safetensors', 'no-such-variant'):\n"
            "    try: check_model(m)\n"
            "    except Exception as e: print(type(e).__name__, str(e).split(':')[0])\n"
            "print(sorted(m for m in ('torch', 'openvino', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["FastDPTError model file not found"] * 3 + ["ConfigError 'no-such-variant' is neither "
                                     "a preset nor a variant name", "[]"], r.stdout
    # and what the lazy attributes name is still there, on first use
    r = subprocess.run([sys.executable, "-c", "import fastdpt; print(fastdpt.Predictor.__name__, "
                        "fastdpt.create_model.__name__); from fastdpt.training import train; print(train.__name__)"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["Predictor", "create_model", "train"], r.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import fastdpt

        fastdpt.nope  # noqa: B018


def test_a_negative_camera_index_is_one_line_not_a_segfault():
    from fastdpt.errors import StreamError
    from fastdpt.stream import VideoSource

    with pytest.raises(StreamError, match="camera index must be 0 or more"):
        VideoSource(-1)
    r = subprocess.run([*FASTDPT, "camera", "--index", "-1", "-m", "fast-effb0-f64-128x416"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)  # a usage error, not 139
    assert "--index" in r.stderr and "Traceback" not in r.stderr


def test_a_closed_stdout_does_not_stop_a_batch(tmp_path):
    import fastdpt
    from fastdpt.weights import save_checkpoint

    ckpt = save_checkpoint(fastdpt.create_model(TINY_EFF).eval(), tmp_path / "m.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(src / f"{i}.png")
    outdir = tmp_path / "out"
    # `fastdpt predict in | head -1`: the reader goes away after the first line
    p = subprocess.Popen([*FASTDPT, "predict", str(src), "-m", str(ckpt), "-o", str(outdir), "--backend", "torch",
                          "--precision", "fp32", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()
    _, err = p.communicate(timeout=300)
    assert first.strip().endswith(b".png")
    assert p.returncode == 0, err.decode()[-2000:]
    assert sorted(f.name for f in outdir.iterdir()) == [f"{i}.png" for i in range(6)]  # every input was done


def test_grids_are_bounded_and_their_training_options_checked(tmp_path):
    from fastdpt.errors import ConfigError
    from fastdpt.study.grid import load_grid

    big = tmp_path / "big.yaml"
    big.write_text("features: [32, 48, 64, 96]\nheads: [1, 12, 24]\ntrain:\n  lr: [1e-4, 2e-4, 3e-4]\n"
                   "  batch_size: [2, 4, 8]\n")
    with pytest.raises(ConfigError, match=r"108 combinations, over the limit of 100; pass --max-trials 108"):
        load_grid(str(big), max_trials=100)
    specs = load_grid(str(big), max_trials=108)
    assert len(specs) == 108 and {s.train["lr"] for s in specs} == {1e-4, 2e-4, 3e-4}  # YAML's "1e-4" is a string
    for bad, what in [("epochs: -5", "--epochs must be at least 1, got -5"), ("lr: -1", "--lr must be positive"),
                      ("lr: fast", "wrong type"), ("lr_schedule: linear", "--lr-schedule must be one of constant, cosine"),
                      ("warmup_steps: -3", "--warmup-steps must not be negative")]:
        g = tmp_path / "bad.yaml"
        g.write_text(f"heads: [1, 12]\ntrain:\n  {bad}\n")
        with pytest.raises(ConfigError, match=what):
            load_grid(str(g))
    r = runner.invoke(app, ["study", "run", str(big), "--out", str(tmp_path / "s"), "--max-trials", "10"])
    assert r.exit_code == 2 and "108 combinations" in r.output and not (tmp_path / "s").exists()


def test_a_finished_trial_whose_folder_was_deleted_is_trained_again(tmp_path):
    from fastdpt.study.results import read_rows, write_row
    from fastdpt.study.sweep import forget_lost_trials

    kept = tmp_path / "trials" / "a" / "run" / "best.safetensors"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"weights")
    write_row(tmp_path, {"name": "a", "status": "ok", "steps": 5, "checkpoint": str(kept)})
    write_row(tmp_path, {"name": "b", "status": "ok", "steps": 5,
                         "checkpoint": str(tmp_path / "trials" / "b" / "run" / "best.safetensors")})  # deleted
    write_row(tmp_path, {"name": "base~baseline", "status": "baseline", "steps": None, "checkpoint": None})  # timed only
    assert forget_lost_trials(tmp_path) == ["b"]
    assert sorted(r["name"] for r in read_rows(tmp_path)) == ["a", "base~baseline"]


def test_the_html_report_renders_markdown_and_escapes_html():
    from fastdpt.study.report import inline_html

    assert inline_html("**attention**: `performer` is 1.8x") == \
        "<strong>attention</strong>: <code>performer</code> is 1.8x"
    assert "<script>" not in inline_html("<script>alert(1)</script> a <b>name</b>")
    assert "&lt;script&gt;" in inline_html("<script>alert(1)</script>")


def test_study_status_prints_a_whole_failure_reason(tmp_path):
    from fastdpt.study.results import write_row

    (tmp_path / "study.json").write_text("{}")
    (tmp_path / "trials.json").write_text(json.dumps([{"id": "x"}]))
    reason = "ValueError: " + "a long reason that a table cell would cut at eighty columns " * 3 + "END"
    write_row(tmp_path, {"name": "x", "status": "failed", "error": reason, "attempts": 3})
    r = runner.invoke(app, ["study", "status", str(tmp_path)], env={"COLUMNS": "80"})
    assert r.exit_code == 0 and f"failed: x: {reason}" in r.output.replace("\n", "")


def test_speedups_come_with_their_spread_over_interleaved_rounds():
    from fastdpt.config import ModelConfig
    from fastdpt.study.report import full_table, summary
    from fastdpt.study.results import with_speedups

    base = ModelConfig(input_size=(64, 96))
    soft = ModelConfig(backbone="effb0", input_size=(64, 96))
    perf = soft.replace(attention="performer")

    def row(cfg, rounds, abs_rel, **kw):
        lat = sorted(rounds)[len(rounds) // 2]
        return {"name": cfg.name, "model": cfg.name, "status": "ok", "abs_rel": abs_rel, "latency_ms_median": lat,
                "fps": 1000 / lat, "rounds_latency_ms": rounds, **kw}

    # performer is 1.14x faster than softmax on the medians, but one round has it slower
    rows = with_speedups([row(base, [200.0, 210.0, 190.0], 0.30, baseline=True, status="baseline"),
                          row(soft, [100.0, 90.0, 110.0], 0.20), row(perf, [85.0, 88.0, 112.0], 0.21)])
    by = {r["name"]: r for r in rows}
    assert by[soft.name]["speedup"] == 2.0 and not by[soft.name]["speedup_in_noise"]
    assert by[soft.name]["speedup_min"] == round(min(200 / 100, 210 / 90, 190 / 110), 3)
    assert by[perf.name]["speedup_min"] < by[perf.name]["speedup_max"] and "speedup_min" not in by[base.name]
    head, body = full_table(rows)
    cells = {b[0]: b[head.index("speed-up")] for b in body}
    assert cells[soft.name].startswith("2.00x (") and not cells[soft.name].endswith("~")
    # the attention comparison, per round: 100/85, 90/88, 110/112: the range holds 1.0
    text = " ".join(summary(rows))
    assert "attention" in text and "within the timing noise" in text
