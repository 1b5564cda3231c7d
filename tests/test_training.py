import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import fastdpt
from fastdpt.data.kitti import find_gt, read_split
from fastdpt.io import read_depth_png
from fastdpt.data.synthetic import synth
from fastdpt.evaluation import Protocol, evaluate, score_image
from fastdpt.predict import Predictor

pytest.importorskip("lightning")
pytest.importorskip("mlflow")

from fastdpt.errors import NonFiniteLossError  # noqa: E402
from fastdpt.training import train  # noqa: E402
from conftest import TRAIN_MODEL, train_config  # noqa: E402

MODEL = TRAIN_MODEL


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth(out, drives=6, frames=30, size=(128, 416), seed=1, workers=2)
    return out


def _cfg(data, out, **kw):
    return train_config(data, out, **{"epochs": 6, "batch_size": 4, **kw})


def best_constant_abs_rel(data, split):
    gts = [read_depth_png(find_gt(data / "data_depth_annotated", e.gt)) for e in split if e.gt]
    values = np.concatenate([g[g > 0] for g in gts])
    candidates = np.quantile(values, np.linspace(0.01, 0.99, 99))
    return min(np.mean([score_image(np.full_like(g, c), g, crop=None)["abs_rel"] for g in gts]) for c in candidates)


def test_short_training_beats_best_constant(data, tmp_path):
    run = tmp_path / "run"
    res = train(_cfg(data, run))
    assert res["global_step"] == 6 * 20  # 80 annotated training frames / batch 4 = 20 steps an epoch
    for name in ("last.safetensors", "best.safetensors", "resume.ckpt", "mlflow.db", "train_config.json"):
        assert (run / name).is_file(), name
    model = fastdpt.load(run / "best.safetensors")
    assert model.config.name == MODEL
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    metrics = evaluate(Predictor(model), test, data / "raw", data / "data_depth_annotated", Protocol(crop=None))
    constant = best_constant_abs_rel(data, test)
    assert metrics["images"] == 20
    assert metrics["abs_rel"] < 0.7 * constant, (metrics["abs_rel"], constant)
    # tracking: params, per-epoch validation metrics and artefacts in the run's SQLite store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (mrun,) = client.search_runs([client.get_experiment_by_name("fastdpt").experiment_id])
    assert mrun.data.params["model"] == MODEL and mrun.data.params["seed"] == "0"
    assert len(client.get_metric_history(mrun.info.run_id, "val/abs_rel")) == 6
    # one copy of each checkpoint on disk: MLflow records where it is (a copy only with --log-checkpoints)
    assert mrun.data.tags["checkpoint.best"] == str((run / "best.safetensors").resolve())
    assert not client.list_artifacts(mrun.info.run_id, "checkpoints")
    assert {a.path for a in client.list_artifacts(mrun.info.run_id)} == {"predictions"}


def test_validation_metrics_equal_fastdpt_eval(data, tmp_path):
    """The numbers that chose best.safetensors are the numbers `fastdpt eval` reports on it, over the
    same frames with the same protocol (Garg crop, no KB crop: the defaults of both for these frames)."""
    from typer.testing import CliRunner

    from fastdpt.cli import app
    from fastdpt.evaluation import METRIC_KEYS

    run = tmp_path / "run"
    res = train(_cfg(data, run, epochs=3, limit_train_batches=5))
    best = res["best_metrics"]
    assert res["best_epoch"] in (0, 1, 2) and best["images"] == 20
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["eval", "--weights", str(run / "best.safetensors"), "--data-root", str(data),
                                 "--split-file", str(data / "splits" / "val_files_with_gt.txt"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    ev = json.loads(out.read_text())
    assert ev["images"] == best["images"]
    for k in METRIC_KEYS:
        assert ev[k] == pytest.approx(best[k], rel=1e-6, abs=1e-9), k
    # and what MLflow logged for that epoch (Lightning logs float32)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (mrun,) = client.search_runs([client.get_experiment_by_name("fastdpt").experiment_id])
    for k in ("abs_rel", "rmse", "d1"):
        history = sorted(client.get_metric_history(mrun.info.run_id, f"val/{k}"), key=lambda m: m.step)
        assert len(history) == 3
        assert history[res["best_epoch"]].value == pytest.approx(ev[k], rel=1e-6)


def test_ssi_loss_trains_a_relative_variant_on_dense_depth(data, tmp_path):
    """The loss is injected: the scale-and-shift-invariant loss trains a relative model, on the synthetic
    drives' dense depth (dense/*.npy); SILog refuses a relative model with a clear error."""
    rel = "effb0.h0-1.heads4.softmax.f32@64x192"
    with pytest.raises(fastdpt.FastDPTError, match="metric head"):
        train(_cfg(data, tmp_path / "silog", model=rel, epochs=1, limit_train_batches=2))
    res = train(_cfg(data, tmp_path / "ssi", model=rel, loss="ssi", dense_gt=True, epochs=2, limit_train_batches=5,
                     lr=3e-4))
    assert res["global_step"] == 10 and (tmp_path / "ssi" / "best.safetensors").is_file()
    assert np.isfinite(res["metrics"]["train/loss_epoch"])
    # validation scored the relative model after scale-and-shift alignment, as `fastdpt eval --align` does
    test = read_split(data / "splits" / "val_files_with_gt.txt")
    ev = evaluate(Predictor(fastdpt.load(tmp_path / "ssi" / "best.safetensors")), test, data / "raw",
                  data / "data_depth_annotated", Protocol("garg", align=True))
    assert ev["abs_rel"] == pytest.approx(res["best_metrics"]["abs_rel"], rel=1e-6)


def test_a_cosine_schedule_with_warm_up_sets_every_steps_learning_rate(data, tmp_path):
    """``--lr-schedule cosine --warmup-steps 2``: the learning rate each optimiser step used (read from the
    optimiser as the step starts, and as MLflow recorded it) follows the formula: (s + 1) / 2 of lr while
    warming up, then lr (1 + cos(pi (s - 2) / (total - 2))) / 2, falling towards 0 (reached at step total)."""
    import math

    import lightning as L

    class Seen(L.Callback):
        def __init__(self):
            self.lrs: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    lr, warmup, total = 1e-3, 2, 8
    run = tmp_path / "run"
    seen = Seen()
    res = train(_cfg(data, run, epochs=2, limit_train_batches=4, limit_val_batches=2, lr=lr, lr_schedule="cosine",
                    warmup_steps=warmup),
                callbacks=[seen])
    assert res["global_step"] == total
    expected = [lr * (s + 1) / warmup if s < warmup else lr * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2
                for s in range(total)]
    assert seen.lrs == pytest.approx(expected, rel=1e-9)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (mrun,) = client.search_runs([client.get_experiment_by_name("fastdpt").experiment_id])
    logged = sorted(client.get_metric_history(mrun.info.run_id, "train/lr"), key=lambda m: m.step)
    assert [m.value for m in logged] == pytest.approx(expected, rel=1e-6)  # Lightning logs float32


def test_non_finite_loss_stops_cleanly(data, tmp_path, monkeypatch):
    import fastdpt.losses as tr

    calls = {"n": 0}
    real = tr.silog_loss

    def flaky(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] > 25 else loss  # in the second epoch

    monkeypatch.setattr(tr, "silog_loss", flaky)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="nan at epoch 1"):
        train(_cfg(data, run, epochs=3))
    kept = fastdpt.load(run / "last.safetensors")  # the checkpoint of the last finished epoch survives
    assert all(torch.isfinite(p).all() for p in kept.parameters())
    with pytest.raises(fastdpt.FastDPTError, match="--resume"):
        train(_cfg(data, run, epochs=3))


def test_killed_run_resumes(data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastdpt.cli", "train", "--model", MODEL, "--data-root", str(data), "--out", str(run),
           "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--workers", "0", "--no-kb-crop",
           "--checkpoint-every", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = run / "resume.ckpt"
    deadline, seen = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        stamp = state.stat().st_mtime_ns if state.is_file() else None
        if stamp is not None and stamp != seen:  # read a new resume state once, not every poll (it competes
            seen = stamp                         # with the training for the two cores)
            step = torch.load(state, map_location="cpu", weights_only=False)["global_step"]
            if 6 <= step < 18:  # mid-way through the first epoch
                break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, map_location="cpu", weights_only=False)["global_step"]
    assert saved >= 6 and not (run / "result.json").exists()
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((run / "result.json").read_text())
    assert res["global_step"] == 40 and res["epochs"] == 2


def test_sigterm_to_the_process_group_stops_a_training_like_ctrl_c(data, tmp_path):
    """What ``timeout``, ``docker stop`` and systemd send, to the command and its data-loader processes:
    one line saying what was kept and how to resume, exit 130, no traceback; the resume state is whole."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastdpt.cli", "train", "--model", MODEL, "--data-root", str(data), "--out", str(run),
           "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--workers", "2", "--no-kb-crop",
           "--checkpoint-every", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (run / "resume.ckpt").is_file():
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be stopped"
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "killed by signal" not in output, output
    # quiet by default: the libraries' chatter is behind --verbose
    assert "GPU available" not in output and "Tip:" not in output and "Creating it" not in output, output
    assert output.strip().splitlines()[-1] == (f"interrupted: the run in {run} is kept; continue it with "
                                               f"`fastdpt train --out {run} --resume`")
    assert torch.load(run / "resume.ckpt", map_location="cpu", weights_only=False)["global_step"] >= 2
    assert not (run / "result.json").exists()
