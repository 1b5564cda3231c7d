import pytest

from fastdpt.config import BACKBONES, ModelConfig
from fastdpt.presets import PRESETS, get_config, list_models, resolve_names
from fastdpt.errors import ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_name_round_trips(name):
    cfg = PRESETS[name].config
    assert ModelConfig.from_name(cfg.name) == cfg
    assert ModelConfig.from_name(cfg.name).name == cfg.name
    assert get_config(name) == cfg


@pytest.mark.parametrize("cfg", [
    ModelConfig(attention="performer", performer_features=128, heads=24, features=64, input_size=(192, 640)),
    ModelConfig(metric=(1.5e-05, 0.25), keep_aspect=True),
    ModelConfig(metric=(2.0, -0.5), backbone="effb0", hooks=(3, 7)),
])
def test_custom_configs_round_trip(cfg):
    assert ModelConfig.from_name(cfg.name) == cfg


def test_official_preset_names():
    assert get_config("dpt-hybrid-midas").name == "r50.h8-11.heads12.softmax.f256@384x384-keep"
    kitti = get_config("dpt-hybrid-kitti")
    assert kitti.name == "r50.h8-11.heads12.softmax.f256.kitti@352x1216-keep"
    assert kitti.metric == (0.00006016, 0.00579)
    assert get_config("dpt-hybrid-nyu").input_size == (480, 640)


def test_study_grid_is_complete():
    study = [get_config(n) for n in list_models("study")]
    assert len(study) == 72 and len(set(study)) == 72
    for size in ((352, 1216), (192, 640)):
        group = [get_config(n) for n in list_models(f"study@{size[0]}x{size[1]}")]
        assert len(group) == 36
        axes = {(c.backbone, c.hooks, c.attention, c.heads) for c in group}
        assert axes == {(b, h, a, n) for b in BACKBONES for h in ((0, 1), (2, 5), (8, 11))
                        for a in ("softmax", "performer") for n in (1, 12, 24)}
        assert all(c.input_size == size and not c.keep_aspect and c.metric == (0.00006016, 0.00579) for c in group)


def test_resolve_names_expands_groups_and_globs():
    assert len(resolve_names(["study@192x640", "dpt-hybrid-kitti"])) == 37
    assert resolve_names(["fast"]) == ["fast-effb0-f128-192x640", "fast-effb0-f64-192x640", "fast-effb0-f64-128x416"]
    assert resolve_names(["dpt-hybrid-*"]) == ["dpt-hybrid-midas", "dpt-hybrid-kitti", "dpt-hybrid-nyu"]
    with pytest.raises(ConfigError):
        resolve_names(["nothing-*"])


@pytest.mark.parametrize("kwargs", [
    dict(heads=7), dict(hooks=(5, 3)), dict(hooks=(0, 12)), dict(input_size=(100, 320)),
    dict(backbone="vgg"), dict(attention="linear"), dict(performer_features=64), dict(features=0),
    dict(metric=(float("nan"), 0.0)),
    # sizes a name or a file's metadata may declare are bounded before anything is built
    dict(input_size=(8192, 8192)), dict(features=100000),
    dict(attention="performer", performer_features=10**6),
])
def test_invalid_configs_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


# (a name without ".f256" was rejected here before; issue 7 made omitted default fields parse, see below)
@pytest.mark.parametrize("name", ["dpt-hybrid", "r50.h8-11.heads12.softmax.f256", "r50.h8-11.heads12.softmax.f256@384",
                                  "r50.heads12.softmax.f256@384x384"])
def test_bad_names_say_how_to_list(name):
    with pytest.raises(ConfigError, match="fastdpt models"):
        get_config(name)


@pytest.mark.parametrize("short,full", [
    ("r50.h0-1.heads1.softmax@192x640", "r50.h0-1.heads1.softmax.f256@192x640"),
    ("r50.h8-11.heads12.softmax@384x384", "r50.h8-11.heads12.softmax.f256@384x384"),
    ("effb0.h0-1.kitti@192x640", "effb0.h0-1.heads12.softmax.f256.kitti@192x640"),
    ("r50.h2-5.performer128.f64@192x640-keep", "r50.h2-5.heads12.performer128.f64@192x640-keep"),
    ("r50.h2-5.f64.imagenet@192x640", "r50.h2-5.heads12.softmax.f64.imagenet@192x640"),
])
def test_omitted_default_fields_parse_to_the_full_config(short, full):
    cfg = get_config(short)
    assert cfg == ModelConfig.from_name(full) and cfg.name == full  # the canonical name stays complete
    assert ModelConfig.from_name(cfg.name) == cfg


def test_derived_fields():
    c = ModelConfig(hooks=(2, 5), heads=24, attention="performer")
    assert c.num_blocks == 6 and c.head_dim == 32 and c.num_features == int(32 * __import__("math").log(32))
    assert ModelConfig(attention="performer").num_features == 266


@pytest.mark.parametrize("name,says", [
    ("dpt-hybird-kitti", "did you mean dpt-hybrid-kitti"),
    ("r50.h8-11.heads12.softmax.f256", "input size is missing"),
    ("r50.h8-11.heads12.softmax.f256@384", "input size '384' should be"),
    ("r50.heads12.softmax.f256@384x384", "hook field after the backbone"),
    ("effb0.h0-1.heads12.softmx.f64@192x640", "unknown or misplaced field 'softmx'"),
    ("effb0.h0-1.f64.heads12@192x640", "misplaced field 'heads12'"),
    ("effb0.h0-1.heads12.softmax.f64.kiti@128x416", "field 'kiti'"),
    ("r18.h0-1@192x640", "unknown backbone 'r18'"),
])
def test_name_errors_say_which_field_is_wrong(name, says):
    with pytest.raises(ConfigError) as e:
        get_config(name)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_tables_never_cut_names():
    import io

    from rich.console import Console

    from fastdpt.cli.common import print_table

    names = list_models("study@192x640")
    for width in (60, 80, 120):
        buf = io.StringIO()
        print_table("t", ["canonical name", "params (M)", "GMACs", "output", "official weights"],
                    [[n, "50.32", "70.1", "metric", ""] for n in names], console=Console(width=width, file=buf))
        text = buf.getvalue()
        assert all(n in text for n in names), width
        assert max(len(line) for line in text.splitlines()) <= width


def test_checkpoint_metadata_cannot_declare_a_huge_model(tmp_path):
    """A safetensors file whose metadata names a giant variant is refused in one line before anything
    is built (it segfaulted at 8.6 GB, or tried to allocate 360 GB)."""
    from safetensors.torch import save_file

    import torch
    from fastdpt import load
    from fastdpt.config import CONFIG_KEY
    from fastdpt.errors import FastDPTError

    for name in ("r50.h0-1.heads12.softmax.f256@8192x8192", "r50.h0-1.heads12.softmax.f100000@384x384"):
        path = tmp_path / "bomb.safetensors"
        save_file({"x": torch.zeros(1)}, str(path), metadata={CONFIG_KEY: name, "format": "pt"})
        with pytest.raises(FastDPTError, match="at most|must be in 2..1024"):
            load(path)


def test_one_parser_each_for_metric_heads_sizes_and_resume_differences():
    """The metric head of a name and of a grid's output axis, the CLI's HxW and compress's --frame-size, and
    what train/distill --resume may not change are each parsed or computed in one place."""
    from fastdpt.config import METRIC_HEADS, parse_metric_head
    from fastdpt.options import parse_hw, resume_differences
    from fastdpt.study.grid import _output

    for text in ("kitti", "nyu", "m0.01_0.0125", "m1e-3_-2.5", "relative", None):
        assert parse_metric_head(text) == _output(text)
    assert parse_metric_head("kitti") == METRIC_HEADS["kitti"] and parse_metric_head("m1e-3_-2.5") == (1e-3, -2.5)
    assert ModelConfig.from_name("effb0.h0-1.m1e-3_-2.5@64x96").metric == (1e-3, -2.5)
    for bad in ("m0.01", "mx_y", "kitty"):
        with pytest.raises(ConfigError):
            parse_metric_head(bad)
    assert parse_hw("352x1216") == (352, 1216) and parse_hw(" 8X9 ") == (8, 9)
    for bad, minimum in (("12", 1), ("0x5", 1), ("31x64", 32), ("axb", 1)):
        with pytest.raises(ConfigError, match="HxW"):
            parse_hw(bad, minimum)
    assert resume_differences({"lr": 1, "epochs": 2}, {"lr": 2, "epochs": 3}, {"epochs"}) == ["lr 1 (run) vs 2 (given)"]
