"""Training runs cannot overwrite runs: a lock, --resume / --overwrite, validated resumes, one-line
errors for damaged resume files, an exact mid-epoch resume, and checkpoints that must match --model."""

import fcntl
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("lightning")

import lightning as L  # noqa: E402

import fastdpt  # noqa: E402
from fastdpt.cli import app  # noqa: E402
from fastdpt.data.synthetic import synth  # noqa: E402
from fastdpt.errors import TrainingError, WeightsError  # noqa: E402
from fastdpt.training import train  # noqa: E402
from conftest import TRAIN_MODEL, train_config  # noqa: E402

MODEL = TRAIN_MODEL
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth(out, drives=3, frames=20, size=(64, 192), seed=3, workers=1)  # 10 annotated training frames
    return out


class Record(L.Callback):
    """The frames of every training batch, in order, and a crash after ``crash_at`` steps."""

    def __init__(self, crash_at=None):
        self.frames, self.crash_at = [], crash_at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.frames.append((trainer.current_epoch, tuple(batch["frame_id"])))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.crash_at is not None and trainer.global_step == self.crash_at:
            raise RuntimeError("simulated crash")


def test_mid_epoch_resume_continues_the_exact_data_order(data, tmp_path):
    full = Record()
    train(train_config(data, tmp_path / "full"), callbacks=[full], logger=False)
    assert len(full.frames) == 10  # 2 epochs x 5 batches
    first = Record(crash_at=7)  # resume state saved at step 7: in the middle of epoch 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(train_config(data, tmp_path / "run", checkpoint_every=7), callbacks=[first], logger=False)
    rest = Record()
    res = train(train_config(data, tmp_path / "run", checkpoint_every=7), resume=True, callbacks=[rest], logger=False)
    assert res["global_step"] == 10
    assert first.frames[:7] + rest.frames == full.frames  # nothing repeated, nothing skipped, same order
    epoch1 = [f for e, b in first.frames[5:7] + rest.frames for f in b]
    assert sorted(epoch1) == sorted(f for e, b in full.frames if e == 1 for f in b) and len(set(epoch1)) == 10


def test_a_busy_run_folder_is_refused_at_once(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another training holds the folder
    try:
        with pytest.raises(TrainingError, match=r"in use by another training \(pid 4242\)"):
            train(train_config(data, run), logger=False)
    finally:
        os.close(fd)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_runs_are_never_overwritten_without_asking(data, tmp_path):
    run = tmp_path / "run"
    train(train_config(data, run, epochs=1), logger=False)
    before = (run / "last.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="--resume to continue it, --overwrite to start over"):
        train(train_config(data, run, epochs=1), logger=False)
    assert (run / "last.safetensors").read_bytes() == before
    (run / "result.json").write_text("{}")
    res = train(train_config(data, run, epochs=1, seed=1), logger=False, overwrite=True)
    assert res["global_step"] == 5 and json.loads((run / "train_config.json").read_text())["seed"] == 1


def test_resume_is_validated_before_anything_is_written(data, tmp_path):
    run = tmp_path / "run"
    train(train_config(data, run, epochs=1), logger=False)
    stored = (run / "train_config.json").read_bytes()
    other = "effb0.h0-1.heads4.softmax.f32.m0.02_0.0125@64x192"
    r = runner.invoke(app, ["train", "-m", other, "--out", str(run), "--resume"])
    assert r.exit_code == 2 and "other options than the run" in r.output and other in r.output
    assert (run / "train_config.json").read_bytes() == stored
    # more epochs is a legitimate resume; everything not given comes from the run
    r = runner.invoke(app, ["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "result.json").read_text())["global_step"] == 10


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10])
def test_damaged_resume_state_is_one_line(data, tmp_path, content):
    run = tmp_path / "run"
    train(train_config(data, run, epochs=1), logger=False)
    (run / "resume.ckpt").write_bytes(content)
    r = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert r.exit_code == 2 and "cannot be resumed" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_checkpoint_must_match_the_model_it_is_loaded_as(data, tmp_path):
    ckpt = fastdpt.save_checkpoint(fastdpt.create_model(MODEL), tmp_path / "m.safetensors")
    assert fastdpt.load(MODEL, weights=ckpt).config.name == MODEL  # the same name is fine
    other = MODEL.replace("heads4", "heads1")  # same tensors, other variant: must not load silently
    with pytest.raises(WeightsError, match="holds .*heads4.*not .*heads1"):
        fastdpt.load(other, weights=ckpt)
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-m", other, "-w", str(ckpt), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "leave out the model name" in r.output


def test_a_killed_save_does_not_block_a_resume(tmp_path, data):
    from fastdpt.errors import TrainingError
    from fastdpt.training import train
    from fastdpt.training.run import prepare_run

    cfg = train_config(data, tmp_path / "run", max_steps=2, checkpoint_every=1)
    train(cfg, logger=False)
    run = Path(cfg.out)
    state = (run / "resume.ckpt").read_bytes()
    # kill -9 during the first save: only the .part exists
    (run / "resume.ckpt").rename(run / "resume.ckpt.part")
    with pytest.raises(TrainingError, match=r"nothing to resume.*resume\.ckpt\.part.*--overwrite"):
        prepare_run(cfg, resume=True, overwrite=False, delete=False)
    assert (run / "resume.ckpt.part").exists()  # nothing removed outside the run's lock
    # kill -9 during a later save: a complete state and a stale .part; the resume removes the .part
    (run / "resume.ckpt").write_bytes(state)
    prepare_run(cfg, resume=True, overwrite=False, delete=True)
    assert not (run / "resume.ckpt.part").exists() and (run / "resume.ckpt").read_bytes() == state
    # a new run with --overwrite removes a stale .part too
    (run / "resume.ckpt.part").write_bytes(b"x" * 10)
    prepare_run(cfg, resume=False, overwrite=True)
    assert not (run / "resume.ckpt.part").exists()


def test_a_failed_save_leaves_no_part(tmp_path, monkeypatch):
    from fastdpt.training.callbacks import SaveCheckpoints

    saver = SaveCheckpoints.__new__(SaveCheckpoints)
    saver.run = tmp_path

    class Trainer:
        is_global_zero = True

        def save_checkpoint(self, path, weights_only=False):
            Path(path).write_bytes(b"half")
            raise OSError(28, "No space left on device")

    from fastdpt.errors import DiskFullError

    with pytest.raises(DiskFullError, match=r"disk full: cannot write .*resume\.ckpt \(0\.0 MB written"):
        saver._resume_state(Trainer())
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from fastdpt.errors import DiskFullError
    from fastdpt.io import write_text

    write_text(tmp_path / "a.json", "old")

    def full(p):
        p.write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    from fastdpt.io import atomic_write

    with pytest.raises(DiskFullError, match=r"a\.json .*MB free there"):
        atomic_write(tmp_path / "a.json", full)
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_text() == "old"


def test_a_finished_run_drops_its_resume_state_when_asked(data, tmp_path):
    # the demo wrote 1.3 GB (resume.ckpt alone 378 MB); the demo and study trials now drop it when done
    kept = train(train_config(data, tmp_path / "kept", epochs=1), logger=False)
    assert (tmp_path / "kept" / "resume.ckpt").is_file() and "resume_dropped" not in kept  # default: extendable
    res = train(train_config(data, tmp_path / "run", epochs=1, keep_resume=False), logger=False)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "resume.ckpt" not in names and res["resume_dropped"]
    assert {"best.safetensors", "last.safetensors", "result.json", "train_config.json"} <= set(names)
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2"])
    assert r.exit_code == 2 and "nothing to resume" in r.output
