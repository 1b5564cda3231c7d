"""The backend registry, RuntimeOptions and the `auto` choice, and each backend x precision against
torch fp32 on a tiny variant.

Tolerances: fp32 backends compute the same graph in float32 with other kernels and fusion orders, so
they agree to 1e-4 relative. bf16 keeps 8 bits of mantissa (relative rounding ~4e-3 a value, growing
through a dozen layers): median relative depth error 5e-2. int8 (calibrated, per-channel weights,
per-tensor activations) on random weights is the loosest: median 0.25. The trained-model figures are
in BENCHMARKS.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fastdpt
from conftest import TINY, TINY_EFF
from fastdpt.cli import app
from fastdpt.data.synthetic import sample_frames
from fastdpt.errors import ConfigError
from fastdpt.runtime import (REGISTRY, RuntimeOptions, available_backends, backend_names, choose, native_bf16,
                             native_int8)

runner = CliRunner()
FRAMES = sample_frames(3, size=(96, 320), seed=2)
AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"})
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fastdpt.create_model(TINY_EFF).eval()


@pytest.fixture(scope="module")
def reference(model):
    pred = fastdpt.Predictor(model)
    return [pred.predict(f).depth for f in FRAMES]


def _median_rel(a, b) -> float:
    return float(np.median(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


CASES = [("onnxruntime", "fp32", 1e-4), ("onnxruntime", "int8", 0.25), ("openvino", "fp32", 1e-4),
         ("openvino", "int8", 0.25), ("openvino", "bf16", 5e-2), ("torch", "bf16", 5e-2)]


@pytest.mark.parametrize("backend,precision,tol", CASES)
def test_each_backend_and_precision_agrees_with_torch_fp32(model, reference, backend, precision, tol):
    lack = REGISTRY[backend].missing("cpu")
    if lack:
        pytest.skip(f"{backend} needs {lack}")
    if precision == "bf16" and not native_bf16():
        with pytest.raises(ConfigError, match="(emulated|not native).*(AMX|AVX512-BF16)"):
            fastdpt.Predictor(model, backend=backend, precision=precision)
        pytest.skip("bf16 is emulated on this CPU (refused with one line, checked above)")
    pred = fastdpt.Predictor(model, backend=backend, precision=precision, threads=2,
                             calibration=sample_frames(4, size=(96, 320), seed=5) if precision == "int8" else None)
    errors = [_median_rel(pred.predict(f).depth, r) for f, r in zip(FRAMES, reference)]
    assert max(errors) < tol, errors
    if precision == "fp32":
        worst = max(float(np.max(np.abs(pred.predict(f).depth - r) / np.abs(r).max())) for f, r in zip(FRAMES, reference))
        assert worst < tol
    pred.close()


def test_openvino_runs_the_resnet_variants():
    """DPT-Hybrid's ResNet-50 stem (OpenVINO's direct PyTorch conversion crashed its CPU plugin on it;
    the backend converts through the ONNX export)."""
    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    model = fastdpt.create_model(TINY).eval()
    with torch.no_grad():
        model.head[-2].bias.fill_(1.0)  # a live output (a random head is often all zero after its ReLU)
    frame = FRAMES[0][:64, :96]
    ref = fastdpt.Predictor(model).predict(frame).depth
    got = fastdpt.Predictor(model, backend="openvino", threads=2).predict(frame).depth
    assert float(np.max(np.abs(got - ref)) / np.abs(ref).max()) < 1e-4


def test_openvino_leaves_its_threads_unpinned_when_it_shares_the_machine():
    """Fewer threads than the process may use (Ray labelling actors, parallel study trials): OpenVINO's
    default pinning put two 1-thread processes on the same core, each at half speed (BENCHMARKS.md,
    distillation); unpinned, the OS spreads them. Read back from the compiled model."""
    import os

    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("a single CPU: nothing to share")
    from fastdpt.runtime.openvino import convert

    model = fastdpt.create_model(TINY_EFF).eval()
    size = model.config.input_size
    one = fastdpt.Predictor(model, backend="openvino", threads=1)
    whole = fastdpt.Predictor(model, backend="openvino", threads=len(os.sched_getaffinity(0)))
    try:
        shared = one.backend._compile(convert(model, size))
        assert int(shared.get_property("INFERENCE_NUM_THREADS")) == 1
        assert shared.get_property("ENABLE_CPU_PINNING") is False
        del shared
        assert "ENABLE_CPU_PINNING" not in _compile_config(whole.backend, convert(model, size))
    finally:
        one.close()
        whole.close()


CTRL_C_AFTER_TWO_PREDICTORS = """
import gc, os, signal, sys, time
import numpy as np
import fastdpt
model = fastdpt.create_model(sys.argv[1]).eval()
frame = np.zeros((48, 64, 3), np.uint8)
first = fastdpt.Predictor(model, backend="openvino", threads=1)
first.predict(frame)
second = fastdpt.Predictor(model, backend="openvino", threads=1)
second.predict(frame)
first.close(); del first; gc.collect()      # closed in the order they were made
second.close(); del second; gc.collect()
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_still_works_after_openvino_predictors_closed_in_the_order_they_were_made():
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack per Core and restores it when the
    Core goes; with a Core per backend, two predictors closed first-made-first left the stack pointing
    at freed memory and the next Ctrl-C killed the process with SIGSEGV (a segfault in the CI's stream
    tests after the distillation report held two predictors). In a child process, since the failure is
    a crash."""
    import subprocess
    import sys

    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    r = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_TWO_PREDICTORS, TINY_EFF.name], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("interrupted"), (r.returncode, r.stderr[-2000:])


def test_openvino_batches_run_as_requests_in_flight_together_with_the_same_depth():
    """A batch (stream --batch, predict_many) runs its frames as requests of a throughput-mode model
    (one stream a thread), compiled once, on the first batch; a single frame keeps the latency-mode
    request. The depth is the same either way."""
    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    model = fastdpt.create_model(TINY_EFF).eval()
    pred = fastdpt.Predictor(model, backend="openvino", threads=2)
    compiled = []
    real = pred.backend._compile
    pred.backend._compile = lambda om, throughput=False: compiled.append(throughput) or real(om, throughput)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    try:
        one = np.stack([pred.predict(f).depth for f in frames])
        assert compiled == [False]
        many = pred.predict_batch(frames).numpy()
        again = pred.predict_batch(frames[::-1]).numpy()
        assert compiled == [False, True]  # the throughput model, once
        np.testing.assert_allclose(many, one, rtol=1e-5)
        np.testing.assert_allclose(again, one[::-1], rtol=1e-5)  # each frame's depth in its own place
        config = _compile_config(pred.backend, None, throughput=True)
        assert config["PERFORMANCE_HINT"] == "THROUGHPUT" and config["NUM_STREAMS"] == 2
        assert config["INFERENCE_NUM_THREADS"] == 2
    finally:
        pred.close()
    # batches first (distillation's labelling): only the throughput model is made, from the graph converted
    # for it, and a lone frame after them (the last one labelled) runs on it instead of compiling another
    pred = fastdpt.Predictor(model, backend="openvino", threads=2)
    compiled, converted = [], []
    real = pred.backend._compile
    pred.backend._compile = lambda om, throughput=False: compiled.append(throughput) or real(om, throughput)
    import fastdpt.runtime.openvino as ovb

    real_convert = ovb.convert
    try:
        ovb.convert = lambda *a: converted.append(1) or real_convert(*a)
        many = pred.predict_batch(frames).numpy()
        last = pred.predict(frames[0]).depth
        assert compiled == [True] and len(converted) == 1
        np.testing.assert_allclose(many, one, rtol=1e-5)
        np.testing.assert_allclose(last, one[0], rtol=1e-5)
    finally:
        ovb.convert = real_convert
        pred.close()


def _compile_config(backend, om, throughput: bool = False) -> dict:
    """The config the backend hands OpenVINO's compile_model (captured)."""
    seen = {}

    class Core:
        def compile_model(self, om, device, config):
            seen.update(config)

    real, backend.core = backend.core, Core()
    try:
        backend._compile(om, throughput)
    finally:
        backend.core = real
    return seen


@pytest.mark.parametrize("flags,available,calibration,expected", [
    (AMX, {"torch", "onnxruntime", "openvino"}, False, ("openvino", "bf16")),
    (AMX, {"torch", "onnxruntime"}, False, ("onnxruntime", "fp32")),
    (AMX, {"torch"}, False, ("torch", "bf16")),
    (VNNI, {"torch", "onnxruntime", "openvino"}, True, ("openvino", "int8")),
    (VNNI, {"torch", "onnxruntime", "openvino"}, False, ("openvino", "fp32")),
    (AVX2, {"torch", "onnxruntime", "openvino"}, True, ("openvino", "fp32")),
    (AVX2, {"torch"}, False, ("torch", "fp32")),
])
def test_the_auto_choice_table_follows_the_cpu_flags(flags, available, calibration, expected):
    c = choose("cpu", flags, available, calibration)
    assert (c.backend, c.precision) == expected
    assert c.why and c.line().startswith(f"auto: {expected[0]} {expected[1]}")
    assert native_bf16(flags) == ("amx_bf16" in flags or "avx512_bf16" in flags)
    assert native_int8(VNNI) and not native_int8(AVX2)
    assert choose("cuda:0", flags, available).backend == "cudagraph"


@pytest.mark.parametrize("flags", [AMX, VNNI, AVX2])
@pytest.mark.parametrize("calibration", [False, True])
def test_a_given_backend_with_auto_precision_follows_the_same_policy_as_auto(flags, calibration):
    """``--backend openvino --precision auto`` and ``--backend auto`` agree on OpenVINO's precision
    (best_precision ignored the calibration frames: never int8 on a VNNI-only CPU)."""
    from fastdpt.runtime import best_precision

    both = choose("cpu", flags, {"torch", "onnxruntime", "openvino"}, calibration)
    assert best_precision("openvino", "cpu", calibration, flags=flags) == both.precision
    assert best_precision("torch", "cpu", calibration, flags=flags) == ("bf16" if native_bf16(flags) else "fp32")
    assert best_precision("onnxruntime", "cpu", calibration, flags=flags) == "fp32"


def test_auto_picks_a_backend_this_machine_has(model, reference):
    pred = fastdpt.Predictor(model, backend="auto", precision="auto", threads=2)
    assert pred.options.backend in available_backends("cpu") and pred.options.precision in ("fp32", "bf16")
    assert pred.choice is not None and pred.choice.backend == pred.options.backend
    if pred.options.precision == "fp32":
        assert _median_rel(pred.predict(FRAMES[0]).depth, reference[0]) < 1e-4
    # a precision given, the backend automatic: the first installed backend that runs it
    opts, _ = RuntimeOptions("auto", "fp32").resolve()
    assert opts.backend in available_backends("cpu") and "fp32" in REGISTRY[opts.backend].precisions


def test_the_registry_is_what_the_command_line_offers(tmp_path):
    assert set(backend_names()) == set(REGISTRY) | {"auto"}
    assert {"torch", "compile", "cudagraph", "onnxruntime", "openvino"} <= set(REGISTRY)
    ckpt = fastdpt.save_checkpoint(fastdpt.create_model(TINY_EFF), tmp_path / "m.safetensors")
    img = tmp_path / "f.png"
    from fastdpt.io import write_png
    write_png(img, FRAMES[0])
    r = runner.invoke(app, ["predict", str(img), "-m", str(ckpt), "--backend", "tensorrt", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and all(name in r.output for name in REGISTRY) and "auto" in r.output
    r = runner.invoke(app, ["predict", str(img), "-m", str(ckpt), "--threads", "-1", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output and "--threads" in r.output
    # the default of the online commands is auto: the choice is printed with its reason
    r = runner.invoke(app, ["predict", str(img), "-m", str(ckpt), "-o", str(tmp_path / "o2"), "--threads", "2"],
                      env={"FASTDPT_BACKEND": "auto", "FASTDPT_PRECISION": "auto"})
    assert r.exit_code == 0, r.output
    assert "auto: " in r.output and (tmp_path / "o2").is_dir()


def test_openvino_export_round_trips_its_name_and_refuses_what_it_cannot_run(tmp_path, model, reference):
    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    ckpt = fastdpt.save_checkpoint(model, tmp_path / "m.safetensors")
    r = runner.invoke(app, ["export", str(ckpt), "--format", "openvino", "-o", str(tmp_path / "m.xml")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.bin").is_file() and "max rel error" in r.output
    from fastdpt.runtime import ir_config

    assert ir_config(tmp_path / "m.xml") == model.config
    pred = fastdpt.Predictor(tmp_path / "m.xml", backend="auto", precision="auto")
    assert pred.options.backend == "openvino" and pred.config == model.config
    assert _median_rel(pred.predict(FRAMES[0]).depth, reference[0]) < 1e-4
    with pytest.raises(ConfigError, match="runs with backend 'openvino'"):
        fastdpt.Predictor(tmp_path / "m.xml", backend="onnxruntime")
    # the commands open it too (`-m m.xml`), the depth they write equal to the library's; a missing one is one line
    import cv2

    cv2.imwrite(str(tmp_path / "in.png"), FRAMES[0][..., ::-1])
    r = runner.invoke(app, ["predict", str(tmp_path / "in.png"), "-m", str(tmp_path / "m.xml"), "-o",
                            str(tmp_path / "pred"), "-f", "npy", "--backend", "auto"])
    assert r.exit_code == 0, r.output
    assert _median_rel(np.load(tmp_path / "pred" / "in.npy"), reference[0]) < 1e-4
    r = runner.invoke(app, ["predict", str(tmp_path / "in.png"), "-m", str(tmp_path / "gone.xml"), "-o",
                            str(tmp_path / "pred2")])
    assert r.exit_code != 0 and "model file not found" in r.output and not (tmp_path / "pred2").exists()
    r = runner.invoke(app, ["export", str(ckpt), "--format", "openvino", "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and ".xml" in r.output
    r = runner.invoke(app, ["export", str(ckpt), "--format", "openvino", "-o", str(tmp_path / "m.xml")])
    assert r.exit_code == 2 and "exists" in r.output  # never overwritten without --overwrite
    # an IR file without fastdpt's name (another tool's model) is refused in one line
    import openvino as ov

    plain = ov.convert_model(model, example_input=torch.zeros(1, 3, *model.config.input_size))
    ov.save_model(plain, str(tmp_path / "plain.xml"))
    with pytest.raises(fastdpt.FastDPTError, match="not an OpenVINO model exported by fastdpt"):
        fastdpt.Predictor(tmp_path / "plain.xml", backend="openvino")


def test_an_ir_file_is_read_once_for_its_name_structure_and_int8ness_and_again_when_rewritten(tmp_path, monkeypatch):
    """bench of an .xml asks its variant, pruned structure and int8-ness: one read of the graph, not three;
    a file replaced at the same path (export --overwrite) is read afresh."""
    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    import os

    from fastdpt.runtime import openvino as ovrt

    first, second = fastdpt.create_model(TINY).eval(), fastdpt.create_model(TINY_EFF).eval()
    xml = ovrt.save_ir(first, tmp_path / "m.xml")
    reads = []
    real = ovrt.core().read_model
    monkeypatch.setattr(ovrt, "core", lambda: type("C", (), {"read_model": lambda self, p: reads.append(p) or real(p)})())
    assert ovrt.ir_config(xml) == first.config
    assert ovrt.ir_structure(xml) == {} and not ovrt.ir_quantised(xml)
    assert len(reads) == 1
    monkeypatch.undo()
    stat = os.stat(xml)
    ovrt.save_ir(second, tmp_path / "n.xml")
    os.replace(tmp_path / "n.xml", xml)
    os.replace(tmp_path / "n.bin", tmp_path / "m.bin")
    os.utime(xml, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later write, whatever the clock's grain
    assert ovrt.ir_config(xml) == second.config


def test_bench_all_backends_and_stages(tmp_path):
    import json

    r = runner.invoke(app, ["bench", TINY_EFF.name, "--input-size", "96x320", "--backend", "all", "--runs", "1",
                            "--warmup", "0", "--threads", "2", "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    seen = {(row["backend"], row["precision"]) for row in rows}
    assert ("torch", "fp32") in seen and {b for b, _ in seen} == available_backends("cpu") - {"compile"}
    assert all(row["speedup"] > 0 for row in rows) and "cpu_features" in rows[0]
    r = runner.invoke(app, ["bench", TINY_EFF.name, "--input-size", "96x320", "--stages", "--runs", "1", "--warmup",
                            "0", "--threads", "2", "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    st = json.loads((tmp_path / "s.json").read_text())["rows"][0]
    assert set(st["stages"]) == {"decode", "preprocess", "network", "postprocess", "colour", "encode"}
    assert abs(sum(v["share"] for v in st["stages"].values()) - 1) < 1e-3


def test_an_onnx_file_whose_metadata_names_another_size_fails_at_load(tmp_path, model):
    # it loaded and then skipped every image; it is refused when opened, for both runtimes that read it
    import onnx

    from fastdpt.config import CONFIG_KEY
    from fastdpt.runtime import export_onnx

    path = export_onnx(model, tmp_path / "m.onnx")
    assert fastdpt.Predictor(path, backend="onnxruntime").config == model.config
    proto = onnx.load(str(path))
    other = model.config.replace(input_size=(model.config.input_size[0] * 2, model.config.input_size[1]))
    next(p for p in proto.metadata_props if p.key == CONFIG_KEY).value = other.name
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    for backend in ("onnxruntime", "openvino"):
        if REGISTRY[backend].missing("cpu"):
            continue
        with pytest.raises(ConfigError, match=r"graph takes \d+x\d+ input but its metadata names"):
            fastdpt.Predictor(tmp_path / "edited.onnx", backend=backend)


def test_an_onnx_graph_whose_external_data_escapes_its_folder_is_one_line(tmp_path):
    # ONNX Runtime refuses it with pages of context; the user gets one line naming the file
    from onnx import TensorProto, helper, numpy_helper

    from fastdpt.config import CONFIG_KEY
    from fastdpt.errors import WeightsError

    w = numpy_helper.from_array(np.ones(96, np.float32), "w")  # broadcasts over the last axis
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../outside.bin"), ("offset", "0"), ("length", "384")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["image", "w"], ["depth"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 3, 64, 96])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, TINY.name
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "evil.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(WeightsError, match=r"ONNX Runtime cannot load .*evil\.onnx: .*escapes") as e:
        fastdpt.Predictor(path, backend="onnxruntime")
    assert "\n" not in str(e.value)


def test_a_backend_is_its_class_alone(tmp_path, monkeypatch, model, reference):
    """A toy backend registered here, nothing else touched: the Predictor runs it by name, ``auto`` with a
    given precision finds it by its preference, ``bench --backend all`` times it and ``bench`` reads its
    batching from it, and it is named the reader of files with its suffix (exported suffixes themselves are
    config.EXPORTED_SUFFIXES: a new file format is a second file)."""
    import numpy as np

    from fastdpt.bench import all_runtimes, bench_variant
    from fastdpt.runtime.backends import Backend, by_preference, readers

    calls = []

    class Toy(Backend):
        name = "toy"
        precisions = ("fp32",)
        batches = False
        reads = (".toy",)
        preference = -1  # ahead of every other

        @classmethod
        def create(cls, model, options, calibration=None):
            return cls(model, torch.device(options.device))

        @classmethod
        def open(cls, path, options):
            calls.append(("open", str(path)))
            return cls(fastdpt.create_model(TINY_EFF).eval(), torch.device(options.device))

        def __init__(self, model, device):
            super().__init__(device)
            self.model = model

        def build(self, shape):
            calls.append(tuple(shape))

            def run(x):
                with torch.no_grad():
                    return self.model(x)

            return run

    monkeypatch.setitem(REGISTRY, "toy", Toy)
    pred = fastdpt.Predictor(model, backend="toy")
    np.testing.assert_array_equal(pred.predict(FRAMES[0]).depth, reference[0])
    assert by_preference()[0] == "toy"
    opts, why = RuntimeOptions("auto", "fp32").resolve()
    assert opts.backend in (choose("cpu", available=available_backends("cpu")).backend, "toy")
    assert ("toy", "fp32") in all_runtimes("cpu") and "toy" in backend_names()
    row = bench_variant(TINY_EFF.name, (64, 96), batch_size=4, backend="toy", runs=1, warmup=0)
    assert row.backend == "toy" and row.batch_size == 1  # it said it runs one frame a call
    exported = tmp_path / "m.toy"
    exported.write_text("")
    assert readers(exported) == ("toy",)


def test_an_openvino_file_whose_weights_changed_is_refused(tmp_path, model, reference):
    """save_ir records the sha256 of the .bin in the .xml; a flipped weight byte is one line when the file is
    opened (it ran silently with other depths), and an unchanged export runs as before."""
    pytest.importorskip("openvino")
    from fastdpt.errors import ExportError
    from fastdpt.runtime import openvino as ovrt

    xml = ovrt.save_ir(model, tmp_path / "m.xml")
    depth = fastdpt.Predictor(str(xml), backend="openvino").predict(FRAMES[0]).depth
    assert _median_rel(depth, reference[0]) < 1e-4
    data = bytearray((tmp_path / "m.bin").read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "m.bin").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="not the ones it was exported with"):
        fastdpt.Predictor(str(xml), backend="openvino")
