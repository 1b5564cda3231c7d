"""The command line derives what it can from the library: train's options are TrainConfig's fields."""

from dataclasses import fields

import typer
from typer.testing import CliRunner

from fastdpt.cli import app
from fastdpt.training.config import TrainConfig

runner = CliRunner()


def test_every_training_option_is_a_flag_with_the_library_default():
    cmd = typer.main.get_command(app).commands["train"]
    params = {p.name: p for p in cmd.params}
    for f in fields(TrainConfig):
        assert f.name in params, f"TrainConfig.{f.name} has no command-line option"
        if f.name == "out":
            assert params[f.name].required
            continue
        default = params[f.name].default
        if isinstance(f.default, tuple):
            default = tuple(type(f.default[0])(v) for v in default.replace("x", ",").split(","))
        assert default == f.default, (f.name, default, f.default)
    assert "resume" in params and "overwrite" in params


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
