"""The command line derives what it can from the library: train's options are TrainConfig's fields."""

from dataclasses import fields

from typer.testing import CliRunner

from fastdpt.cli import app
from fastdpt.training.config import TrainConfig

runner = CliRunner()


def _other_value(f):
    """A valid value of a TrainConfig field other than its default, and the words that pass it."""
    flag = f.metadata.get("flags", ("--" + f.name.replace("_", "-"),))[0]
    special = {"model": "fast-effb0-f64-128x416", "lr_schedule": "cosine", "loss": "ssi", "precision": "bf16",
               "monitor": "rmse", "eval_crop": "eigen", "accelerator": "cpu", "devices": "2",
               "betas": (0.8, 0.99), "random_crop": (64, 96), "trim": 0.2, "hflip": 0.25, "clip_value": 0.75,
               "limit_train_batches": 0.5, "limit_val_batches": 3.0, "max_time_s": 90.0}
    if f.default is True or f.default is False:  # a switch: the other side of it
        on, _, off = flag.partition("/")
        return (not f.default), [on if not f.default else off]
    if f.name in special:
        value = special[f.name]
    else:
        value = f"/x/{f.name}" if f.default is None or isinstance(f.default, str) else f.default + 3
    if isinstance(value, tuple):
        return value, [flag, ("x" if isinstance(value[0], int) else ",").join(str(v) for v in value)]
    return value, [flag, str(value)]


def test_every_training_option_reaches_the_library_from_the_command_line(monkeypatch):
    """``fastdpt train`` with every option set to something other than its default hands ``train`` the
    TrainConfig built from those values in Python: no flag dropped, renamed onto another field, or
    converted wrongly (tuples from text, switches, numbers); an option left out keeps the library's default."""
    import fastdpt.training

    seen = []
    monkeypatch.setattr(fastdpt.training, "train", lambda cfg, **kw: seen.append((cfg, kw)) or {})
    values, argv = {}, ["train"]
    for f in fields(TrainConfig):
        values[f.name], words = _other_value(f)
        argv += words
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, r.output
    (cfg, kw), = seen
    assert cfg == TrainConfig(**values) and kw == {"resume": False, "overwrite": False}
    assert all(getattr(cfg, f.name) != f.default for f in fields(TrainConfig) if f.name != "out")
    seen.clear()
    assert runner.invoke(app, ["train", "-m", "fast-effb0-f64-128x416", "--out", "/x/run"]).exit_code == 0
    assert seen[0][0] == TrainConfig(model="fast-effb0-f64-128x416", out="/x/run")


def test_train_options_are_validated_before_any_work(tmp_path):
    r = runner.invoke(app, ["train", "-m", "fast-effb0-f64-128x416", "--out", str(tmp_path / "r"), "--monitor", "speed"])
    assert r.exit_code == 2 and "--monitor must be one of" in r.output
    r = runner.invoke(app, ["train", "-m", "fast-effb0-f64-128x416", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--data-root" in r.output and "error:" in r.output
    assert not (tmp_path / "r").exists()


def test_weights_hub_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("FASTDPT_OFFLINE", "1")
    r = runner.invoke(app, ["weights", "--hub", "Intel/dpt-hybrid-midas"])
    assert r.exit_code == 2 and "downloads are off" in r.output
    r = runner.invoke(app, ["weights"])
    assert r.exit_code == 2 and "--hub" in r.output
