"""Compression on tiny variants: structured pruning removes exactly the heads and channels it says
(counted from the tensors and from the layer formulas), removing channels that carry nothing leaves
the output unchanged (so the dependency groups are cut consistently), pruned models save, load and
export to ONNX with their shapes, clustering leaves at most K values a tensor, and `fastdpt compress`
writes a model every command loads, with its report, refusing bad input on one line."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

pytest.importorskip("torch_pruning")

import fastdpt  # noqa: E402
from fastdpt.cli import app  # noqa: E402
from fastdpt.compress.cluster import MIN_NUMEL, cluster, clustered_tensors  # noqa: E402
from fastdpt.compress.config import CompressConfig  # noqa: E402
from fastdpt.compress.prune import PruneSpec, prune  # noqa: E402
from fastdpt.compress.run import compress  # noqa: E402
from fastdpt.config import ModelConfig  # noqa: E402
from fastdpt.errors import CompressError, ConfigError, WeightsError  # noqa: E402
from fastdpt.models import DPT  # noqa: E402
from fastdpt.models.structure import STRUCTURE_KEY  # noqa: E402
from fastdpt.weights import save_checkpoint  # noqa: E402

EFF = ModelConfig(backbone="effb0", hooks=(0, 1), heads=4, features=32, input_size=(64, 96))
PERF = ModelConfig(backbone="effb0", hooks=(0, 1), heads=4, attention="performer", features=32, input_size=(64, 96))
D = 768  # token width
HD = D // EFF.heads  # head width (192 with 4 heads)


def _model(cfg=EFF, seed=0):
    torch.manual_seed(seed)
    return DPT(cfg).eval()


def _x(seed=1):
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


def _params(sd) -> int:
    return sum(v.numel() for k, v in sd.items() if not k.endswith("projection"))  # buffers are not parameters


def test_pruning_removes_the_heads_and_channels_it_says():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = prune(model, PruneSpec(heads=0.5, mlp=0.5, decoder=0.25), _x())
    after = model.state_dict()
    for i, blk in enumerate(model.encoder.blocks):
        assert blk.attn.num_heads == 2 and structure["heads"][str(i)] == 2
        assert after[f"encoder.blocks.{i}.attn.qkv.weight"].shape == (3 * 2 * HD, D)
        assert after[f"encoder.blocks.{i}.attn.proj.weight"].shape == (D, 2 * HD)
        assert after[f"encoder.blocks.{i}.mlp.fc1.weight"].shape == (1536, D)
        assert after[f"encoder.blocks.{i}.mlp.fc2.weight"].shape == (D, 1536)
    # a quarter of the decoder's channels, rounded to multiples of 8: 32 -> 24, 768 -> 576, 16 stays
    assert after["decoder.layer_rn.0.weight"].shape[0] == 24
    assert after["reassemble.0.readout.weight"].shape[0] == 576
    assert after["head.0.weight"].shape[0] == 16 and after["head.4.weight"].shape == (1, 24, 1, 1)
    # what the encoder lost, by the layer formulas: per block 2 heads (qkv rows + bias, proj columns)
    # and 1536 MLP channels (fc1 rows + bias, fc2 columns)
    per_block = 3 * 2 * HD * (D + 1) + 2 * HD * D + 1536 * (D + 1) + 1536 * D
    enc_before = _params({k: v for k, v in before.items() if k.startswith("encoder.")})
    enc_after = _params({k: v for k, v in after.items() if k.startswith("encoder.")})
    assert enc_before - enc_after == 2 * per_block
    assert all(before[k].shape == v.shape for k, v in after.items() if k.startswith("encoder.cnn"))
    y = model(_x(2))
    assert y.shape == (1, 64, 96) and torch.isfinite(y).all()


def _kill(model, frac=0.25):
    """Zero a leading ``frac`` of every decoder channel (rows and columns of each layer), the first half of
    each block's heads and MLP channels: what they carry no longer reaches the output."""
    with torch.no_grad():
        for blk in model.encoder.blocks:
            a, m = blk.attn, blk.mlp
            dead = a.num_heads // 2 * a.head_dim
            for part in range(3):
                a.qkv.weight[part * D: part * D + dead] = 0
                a.qkv.bias[part * D: part * D + dead] = 0
            a.proj.weight[:, :dead] = 0
            half = m.fc1.out_features // 2
            m.fc1.weight[:half] = 0
            m.fc1.bias[:half] = 0
            m.fc2.weight[:, :half] = 0
        for part in (model.reassemble, model.decoder, model.head):
            for layer in part.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    w = layer.weight
                    if w.shape[0] > 1:  # the depth output keeps its one channel
                        w[: int(w.shape[0] * frac)] = 0
                        if layer.bias is not None:
                            layer.bias[: int(w.shape[0] * frac)] = 0
                    w[:, : int(w.shape[1] * frac)] = 0


@pytest.mark.parametrize("cfg", [EFF, PERF], ids=["softmax", "performer"])
def test_cutting_channels_that_carry_nothing_leaves_the_output_unchanged(cfg):
    model = _model(cfg)
    _kill(model)
    x = _x(3)
    with torch.no_grad():
        want = model(x)
        prune(model, PruneSpec(heads=0.5, mlp=0.5, decoder=0.25), _x())
        got = model(x)
    assert model.encoder.blocks[0].attn.num_heads == 2
    assert model.decoder.layer_rn[3].out_channels == 24 and model.reassemble[1].down.out_channels == 576
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_taylor_importance_ranks_by_gradients_and_leaves_no_gradient_behind():
    model = _model()
    x = _x()
    prune(model, PruneSpec(mlp=0.5, decoder=0.5, importance="taylor"), x, [(x, None), (_x(4), None)])
    assert model.encoder.blocks[0].mlp.fc1.out_features == 1536 and model.decoder.layer_rn[0].out_channels == 16
    assert all(p.grad is None for p in model.parameters())
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("cfg", [EFF, PERF], ids=["softmax", "performer"])
def test_a_pruned_checkpoint_loads_as_the_same_network(tmp_path, cfg):
    model = _model(cfg)
    prune(model, PruneSpec(heads=0.25, mlp=0.3, decoder=0.5), _x())
    path = save_checkpoint(model, tmp_path / "pruned.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["fastdpt.config"] == cfg.name and json.loads(meta[STRUCTURE_KEY])["heads"]["0"] == 3
    loaded = fastdpt.load(path)
    assert loaded.structure == model.structure
    x = _x(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # the same tensors without their shapes: refused, naming the mismatch
    tensors = load_file(str(path))
    save_file(tensors, str(tmp_path / "bare.safetensors"), metadata={"fastdpt.config": cfg.name})
    with pytest.raises(WeightsError, match="shape mismatch"):
        fastdpt.load(tmp_path / "bare.safetensors")
    # shapes that grow a layer, or leave a block without heads, are refused before any tensor is read
    for bad in ({"layers": {"decoder.layer_rn.0": [64, 24]}}, {"heads": {"0": 0}}, {"layers": {"nope": [1, 1]}},
                {"evil": 1}):
        save_file(tensors, str(tmp_path / "bad.safetensors"),
                  metadata={"fastdpt.config": cfg.name, STRUCTURE_KEY: json.dumps(bad)})
        with pytest.raises(WeightsError):
            fastdpt.load(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "bad.safetensors"),
              metadata={"fastdpt.config": cfg.name, STRUCTURE_KEY: "{not json"})
    with pytest.raises(WeightsError, match="not valid JSON"):
        fastdpt.load(tmp_path / "bad.safetensors")


def test_a_pruned_model_exports_to_onnx_that_matches_it(tmp_path):
    pytest.importorskip("onnxruntime")
    from fastdpt.runtime.export import compare, export_onnx

    model = _model()
    prune(model, PruneSpec(heads=0.5, mlp=0.5, decoder=0.5), _x())
    path = export_onnx(model, tmp_path / "pruned.onnx")
    err = compare(model, path, [_x(6), _x(7)])
    assert err["max_rel"] < 1e-4, err


def test_exported_pruned_and_int8_files_bench_with_their_own_counts_and_precision(tmp_path):
    # `fastdpt bench` took only names and .safetensors: an exported file (a QAT int8 model ...) could not be
    # timed. It runs as it is, its parameter and MAC counts those of the pruned network it holds.
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from fastdpt.bench import count_macs, count_params
    from fastdpt.runtime.export import export_onnx
    from fastdpt.runtime.openvino import ir_quantised, ir_structure, save_ir
    from fastdpt.runtime.quantize import quantize_int8

    model = _model()
    prune(model, PruneSpec(heads=0.5, mlp=0.5, decoder=0.5), _x())
    onnx_path, xml = export_onnx(model, tmp_path / "p.onnx"), save_ir(model, tmp_path / "p.xml")
    assert ir_structure(xml) == ir_structure(onnx_path) == model.structure != {}
    calib = [_x(s).numpy() for s in range(4)]
    q = quantize_int8(onnx_path, tmp_path / "p-int8.onnx", calibration=calib)
    assert ir_quantised(q) and not ir_quantised(onnx_path) and not ir_quantised(xml)
    runner = CliRunner()
    r = runner.invoke(app, ["bench", str(xml), str(onnx_path), str(q), "--input-size", "64x96", "--runs", "1",
                            "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    want_params, want_macs = count_params(model), count_macs(EFF, (64, 96), structure=model.structure)
    assert want_params < count_params(_model())
    for row in rows:  # torch (the default for names) cannot run a file: the file's auto backend does
        assert row["params"] == want_params and row["macs"] == want_macs and row["file_mb"] > 0, row
        assert row["backend"] == "openvino" and row["canonical"] == EFF.name and row["latency_ms_median"] > 0
    assert [row["precision"] for row in rows] == ["fp32", "fp32", "int8"]
    r = runner.invoke(app, ["bench", str(xml), str(onnx_path), "--backend", "all", "--input-size", "64x96", "--runs",
                            "1", "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "all.json")])
    assert r.exit_code == 0, r.output
    seen = {(row["name"].rsplit(".", 1)[1], row["backend"], row["precision"])
            for row in json.loads((tmp_path / "all.json").read_text())["rows"]}
    assert {b for _, b, _ in seen} <= {"openvino", "onnxruntime"} and ("onnx", "onnxruntime", "fp32") in seen
    assert ("xml", "openvino", "fp32") in seen and not any(p == "int8" for *_, p in seen)
    # a float file asked for int8 would run in float under an int8 label: refused on one line
    with pytest.raises(ConfigError, match="is a float model"):
        fastdpt.Predictor(xml, backend="openvino", precision="int8")
    r = runner.invoke(app, ["bench", str(tmp_path / "gone.xml"), "--runs", "1"])
    assert r.exit_code == 2 and "model file not found" in r.output


def test_clustering_leaves_at_most_k_values_a_tensor():
    model = _model()
    small = {k: v.clone() for k, v in model.state_dict().items()}
    info = cluster(model, 8)
    touched = clustered_tensors(model)
    assert info["tensors"] == len(touched) > 0
    for name, w in touched.items():
        assert w.numel() >= MIN_NUMEL and 2 <= torch.unique(w).numel() <= 8, name
    for name, v in model.state_dict().items():  # norms, biases, small tensors untouched
        if name not in touched:
            assert torch.equal(v, small[name]), name
    assert info["palettised_bytes"] < info["dense_bytes"] / 6  # 3-bit indices instead of 32-bit floats
    with pytest.raises(ConfigError, match="--cluster"):
        cluster(model, 1)


def test_bad_pruning_and_compression_options_are_one_line(tmp_path, monkeypatch):
    for text, match in (("heads=1.0", r"\(0, 1\)"), ("heads=0", r"\(0, 1\)"), ("mlp=-0.1", r"\(0, 1\)"),
                        ("depth=0.3", "PART"), ("heads=half", "not a number"), ("", "at least one"),
                        ("mlp=0.2,mlp=0.3", "twice")):
        with pytest.raises(ConfigError, match=match):
            PruneSpec.parse(text)
    with pytest.raises(ConfigError, match="every head of block 0"):
        prune(_model(), PruneSpec(heads=0.9), _x())
    base = dict(checkpoint="x.safetensors", out=str(tmp_path / "o"))
    for kw, match in (({}, "nothing to do"), ({"prune": "mlp=0.3", "recover": "distill"}, "needs frames"),
                      ({"prune": "mlp=0.3", "recover": "train"}, "--data-root"),
                      ({"prune": "mlp=0.3", "importance": "taylor"}, "--frames"),
                      ({"cluster": 8, "recover": "distill", "frames": ("f",)}, "--prune as well"),
                      ({"prune": "mlp=0.3", "frame_size": "12"}, "HxW"), ({"qat": "int4", "frames": ("f",)}, "int8"),
                      ({"qat": "int8"}, "pass --frames"), ({"qat": "int8", "frames": ("f",), "qat_lr": 0}, "--qat-lr")):
        with pytest.raises(ConfigError, match=match):
            CompressConfig(**base, **kw)
    from fastdpt.compress import qat as qat_module

    monkeypatch.setitem(sys.modules, "nncf", None)  # as if the openvino extra were not installed
    with pytest.raises(CompressError, match=r"pip install -e '\.\[openvino\]'"):
        qat_module.qat_int8(_model(), [], tmp_path / "q.xml")


def test_compress_names_its_own_way_out_and_caps_threads(tmp_path, monkeypatch):
    """A file that is no fastdpt checkpoint: the message names a command that converts it, not flags compress
    lacks (--model/--weights); --threads above the CPU count is lowered to it, said once."""
    import os

    official = tmp_path / "official.pt"
    torch.save({"a": torch.zeros(2)}, official)
    r = CliRunner().invoke(app, ["compress", str(official), "--out", str(tmp_path / "o"), "--prune", "mlp=0.3"])
    assert r.exit_code == 2 and "fastdpt warm-start VARIANT --init" in r.output, r.output
    assert "--model" not in r.output and "--weights" not in r.output and not (tmp_path / "o").exists()
    cpus = os.cpu_count()
    with pytest.warns(UserWarning, match=f"--threads 999 is more than this machine's {cpus} CPUs: using {cpus}"):
        cfg = CompressConfig(checkpoint="x.safetensors", out=str(tmp_path / "o"), prune="mlp=0.3", threads=999)
    assert cfg.threads == cpus
    assert CompressConfig(checkpoint="x.safetensors", out=str(tmp_path / "o"), prune="mlp=0.3", threads=1).threads == 1


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(_model(), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_compress_writes_a_model_every_command_loads_and_never_overwrites(tmp_path, tiny_ckpt):
    out = tmp_path / "small"
    r = CliRunner().invoke(app, ["compress", str(tiny_ckpt), "--out", str(out), "--prune", "heads=0.5,mlp=0.5",
                                 "--cluster", "16", "--backend", "torch", "--frame-size", "64x96", "--bench-runs", "2",
                                 "--threads", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    model = fastdpt.load(out / "model.safetensors")
    assert report["after"]["params"] == sum(p.numel() for p in model.parameters()) < report["before"]["params"]
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["after"]["file_bytes"] == (out / "model.safetensors").stat().st_size < report["before"]["file_bytes"]
    assert report["speed"]["before"]["median_ms"] > 0 and report["speedup"] > 0
    assert model.encoder.blocks[1].attn.num_heads == 2
    assert torch.unique(model.encoder.blocks[0].mlp.fc1.weight).numel() <= 16
    # bench takes the file: same parameter count, fewer MACs than the variant it came from
    from fastdpt.bench import bench_many

    row = bench_many([str(out / "model.safetensors")], input_size=(64, 96), runs=1, warmup=0, backend="torch")[0]
    assert row.params == report["after"]["params"] and row.macs == report["after"]["macs"]
    assert row.file_mb == pytest.approx(report["after"]["file_bytes"] / 2**20, abs=0.01)
    # predict takes it like any checkpoint
    img = tmp_path / "in.png"
    import cv2

    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    r = CliRunner().invoke(app, ["predict", str(img), "--model", str(out / "model.safetensors"), "-o",
                                 str(tmp_path / "pred"), "--backend", "torch"])
    assert r.exit_code == 0, r.output
    # a second run into the same folder, or into the checkpoint's own folder, is refused and writes nothing
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    r = CliRunner().invoke(app, ["compress", str(tiny_ckpt), "--out", str(out), "--prune", "mlp=0.5"])
    assert r.exit_code != 0 and "not empty" in r.output and len(r.output.strip().splitlines()) == 1
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(CompressError, match="holds the checkpoint"):
        compress(CompressConfig(checkpoint=str(tiny_ckpt), out=str(tiny_ckpt.parent), prune="mlp=0.5",
                                overwrite=True))
    assert tiny_ckpt.is_file()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny metric model trained a few epochs on synthetic drives 1-2 (drive 3 validates, 4 is the test
    drive); drives 3 and 4 also as plain image folders (unlabelled frames)."""
    pytest.importorskip("lightning")
    from conftest import train_config
    from fastdpt.data.synthetic import DATE, drive_name, synth
    from fastdpt.training import train

    root = tmp_path_factory.mktemp("trained")
    data = root / "synth"
    synth(data, drives=4, frames=16, size=(96, 320), seed=3, workers=2)
    train(train_config(data, root / "run", epochs=4, batch_size=4), logger=False)
    frames = root / "frames"
    for d in (3, 4):
        shutil.copytree(data / "raw" / DATE / drive_name(d) / "image_02" / "data", frames / f"clip{d}")
    return data, root / "run" / "best.safetensors", frames


@pytest.mark.slow
def test_recovery_by_distillation_keeps_the_pruned_shapes_and_brings_the_model_back(tmp_path, trained):
    """Pruned hard, then distilled from the unpruned model on unlabelled frames: the pruned shapes stay and
    the output comes closer to the unpruned model's."""
    data, ckpt, frames = trained
    common = dict(checkpoint=str(ckpt), prune="heads=0.5,mlp=0.5,decoder=0.5", frames=(str(frames),),
                  backend="torch", frame_size="96x320", bench_runs=1, threads=2, progress=False)
    plain = compress(CompressConfig(out=str(tmp_path / "plain"), **common))
    rec = compress(CompressConfig(out=str(tmp_path / "rec"), recover="distill", steps=60, batch_size=4, lr=1e-3,
                                  **common))
    assert rec["recover"]["kind"] == "distill"
    recovered = fastdpt.load(tmp_path / "rec" / "model.safetensors")
    assert recovered.structure == plain["prune"]["structure"]
    assert rec["after"]["params"] == plain["after"]["params"] < plain["before"]["params"]
    assert rec["agreement"]["abs_rel_vs_original"] < 0.8 * plain["agreement"]["abs_rel_vs_original"], (
        rec["agreement"], plain["agreement"])


@pytest.mark.slow
def test_recovery_by_training_on_labelled_data_keeps_the_pruned_shapes(tmp_path, trained):
    """--recover train on a labelled data root (small frames: no KB crop), too short to validate: the
    last weights are taken, in the pruned shapes."""
    data, ckpt, _ = trained
    r = compress(CompressConfig(checkpoint=str(ckpt), out=str(tmp_path / "t"), prune="mlp=0.5,decoder=0.5",
                                recover="train", data_root=str(data), steps=3, batch_size=2, backend="torch",
                                frame_size="96x320", bench_runs=1, threads=2, progress=False))
    assert r["recover"]["kind"] == "train" and r["recover"]["path"].endswith("last.safetensors")
    model = fastdpt.load(tmp_path / "t" / "model.safetensors")
    assert model.structure == r["prune"]["structure"] and model.encoder.blocks[0].mlp.fc1.out_features == 1536
    before = fastdpt.load(tmp_path / "t" / "pruned.safetensors")
    assert not torch.equal(model.decoder.layer_rn[0].weight, before.decoder.layer_rn[0].weight)  # it trained


@pytest.mark.slow
def test_quantisation_aware_int8_is_no_worse_than_post_training_int8_on_held_out_drives(tmp_path, trained):
    """QAT (NNCF fake-quantisers fine-tuned on the model's own output, then OpenVINO int8) against
    post-training int8 of the same model calibrated on the same frames: on held-out frames QAT's output is
    at least as close to the float model's, and on the test drive's ground truth its AbsRel moves at most
    as far from the float model's as post-training int8's does (on a model this small, either int8 model
    can score a little better than float by chance, so the quantisation's own error is what is compared)."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    import openvino as ov

    from fastdpt.compress.qat import CALIBRATION_FRAMES
    from fastdpt.compress.run import AGREEMENT_FRAMES, QAT_FRAMES, _agreement, _frames, split_frames
    from fastdpt.data.kitti import read_split
    from fastdpt.evaluation import Protocol, evaluate
    from fastdpt.predict import Predictor

    data, ckpt, frames = trained
    r = compress(CompressConfig(checkpoint=str(ckpt), out=str(tmp_path / "q"), qat="int8", qat_steps=12,
                                frames=(str(frames),), backend="torch", frame_size="96x320", bench_runs=1, threads=2,
                                progress=False, seed=0))
    xml = tmp_path / "q" / "model-int8.xml"
    assert xml.is_file() and r["qat"]["calibration_frames"] == CALIBRATION_FRAMES
    history = r["qat"]["validation_abs_rel"]
    assert list(history) == ["0", "3", "6", "9", "12"] and history[str(r["qat"]["kept_step"])] == min(history.values())
    ops = ov.Core().read_model(str(xml)).get_ops()
    assert "FakeQuantize" in {op.get_type_name() for op in ops}  # quantised activations, run by the CPU plugin in int8
    # the weights are stored as int8 (a byte each, as OpenVINO's converter stores them), not float32 behind
    # fake-quantisers): most weights are int8 constants, and the file is under half of the float32 weights'
    # bytes, the parameters counted from the checkpoint
    int8 = sum(op.get_byte_size() for op in ops if op.get_type_name() == "Constant"
               and op.get_element_type().get_type_name() in ("i8", "u8"))
    params = sum(t.numel() for t in fastdpt.load(ckpt).state_dict().values() if t.is_floating_point())
    assert int8 > 0.5 * params and xml.with_suffix(".bin").stat().st_size < 0.5 * 4 * params, (int8, params)
    # the same frames as compress took, split the same way: calibration from the first, held-out the last
    every = _frames(CompressConfig(checkpoint=str(ckpt), out="x", qat="int8", frames=(str(frames),)),
                    AGREEMENT_FRAMES + QAT_FRAMES)
    seen, held_out = split_frames(every)
    qat = Predictor(xml, backend="openvino")
    assert qat.config.name == fastdpt.load(ckpt).config.name
    ptq = Predictor(ckpt, backend="openvino", precision="int8", calibration=seen[:CALIBRATION_FRAMES])
    fp32 = Predictor(ckpt, backend="torch")
    close = {k: _agreement(fp32, p, held_out)["abs_rel_vs_original"] for k, p in (("qat", qat), ("ptq", ptq))}
    assert r["qat"]["agreement qat"]["abs_rel_vs_original"] == pytest.approx(close["qat"], rel=1e-3)
    assert r["qat"]["agreement ptq"]["abs_rel_vs_original"] == pytest.approx(close["ptq"], rel=1e-3)
    from fastdpt.runtime.cpu import native_int8

    if not native_int8():
        # without VNNI / AMX int8 dot products, oneDNN's AVX2 int8 kernels add u8 x s8 pairs into 16 bits,
        # which saturates: the int8 model no longer computes what the fake-quantisers were trained against,
        # so QAT's advantage is asserted only where int8 runs natively (auto never picks int8 elsewhere)
        pytest.skip(f"no native int8 on this CPU (QAT {close['qat']:.4f}, PTQ {close['ptq']:.4f} vs float32)")
    assert close["qat"] <= close["ptq"], close
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    protocol = Protocol("garg", kb_crop=False)
    scores = {k: evaluate(p, test, data / "raw", data / "data_depth_annotated", protocol)["abs_rel"]
              for k, p in (("qat", qat), ("ptq", ptq), ("fp32", fp32))}
    assert abs(scores["qat"] - scores["fp32"]) <= abs(scores["ptq"] - scores["fp32"]) + 1e-4, scores


def test_the_agreement_frames_are_never_the_frames_fitted_on():
    """With 8 frames or fewer the agreement check scored the frames pruning and QAT were fitted on."""
    from fastdpt.compress.run import AGREEMENT_FRAMES, split_frames

    for n in (2, 3, 8, 9, 16, 40):
        frames = [object() for _ in range(n)]
        seen, held = split_frames(frames)
        assert held and seen and not {id(f) for f in held} & {id(f) for f in seen}, n
        assert len(held) == min(AGREEMENT_FRAMES, n // 2) and seen + held == frames
    one = [object()]
    assert split_frames(one) == (one, one) and split_frames([]) == ([], [])
