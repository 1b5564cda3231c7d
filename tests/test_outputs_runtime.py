import io
import threading
from pathlib import Path

import cv2
import numpy as np
import torch
import pytest
from PIL import Image
from typer.testing import CliRunner

import fastdpt
from conftest import TINY
from fastdpt.cli import app
from fastdpt.io import collect_inputs
from fastdpt.io import read_pfm, write_outputs
from fastdpt.predict import DepthResult, Predictor
from fastdpt.weights import save_checkpoint

runner = CliRunner()
METRIC = TINY.replace(metric=(0.01, 0.0125))


def _read_ply(path):
    data = path.read_bytes()
    head, _, body = data.partition(b"end_header\n")
    n = int([line for line in head.decode().splitlines() if line.startswith("element vertex")][0].split()[-1])
    rec = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")],
                        count=n)
    return rec


@pytest.mark.parametrize("kind", ["metric", "relative"])
def test_every_format_reads_back(tmp_path, kind):
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 79, (30, 50)).astype(np.float32)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    res = DepthResult(depth, kind)
    formats = ("color", "png16", "npy", "pfm") + (("ply",) if kind == "metric" else ())
    files = write_outputs(res, "f", tmp_path, formats=formats, image=image, focal=40.0)
    assert [p.name for p in files] == ["f.png", "f_depth16.png", "f.npy", "f.pfm"] + (["f.ply"] if kind == "metric" else [])
    assert np.array_equal(np.load(tmp_path / "f.npy"), depth)
    assert np.array_equal(read_pfm(tmp_path / "f.pfm"), depth)
    u16 = cv2.imread(str(tmp_path / "f_depth16.png"), cv2.IMREAD_UNCHANGED)
    assert u16.dtype == np.uint16
    if kind == "metric":
        np.testing.assert_allclose(u16 / 256.0, depth, atol=0.5 / 256)
        pts = _read_ply(tmp_path / "f.ply")
        assert len(pts) == depth.size
        v, u = 7, 11
        p = pts[v * 50 + u]
        assert p["z"] == pytest.approx(depth[v, u]) and p["x"] == pytest.approx((u - 24.5) * depth[v, u] / 40.0, rel=1e-5)
        assert (p["r"], p["g"], p["b"]) == tuple(image[v, u])
    else:
        lo, hi = depth.min(), depth.max()
        np.testing.assert_allclose(u16 / 65535.0, (depth - lo) / (hi - lo), atol=1e-5)
        with pytest.raises(fastdpt.FastDPTError, match="metric"):
            write_outputs(res, "g", tmp_path, formats=("ply",), image=image, focal=40.0)
    side = np.asarray(Image.open(tmp_path / "f.png"))
    assert side.shape == (30, 100, 3) and np.array_equal(side[:, :50], image)


def test_collect_inputs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.png", "a/b/2.jpg", "a/notes.md", "3.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("3.png\na/b/2.jpg\nmissing.png\n")
    files, missing = collect_inputs([str(tmp_path / "a"), str(tmp_path / "*.png"), str(tmp_path / "list.txt"),
                                     str(tmp_path / "nope.png")])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/1.png", "a/b/2.jpg", "3.png"]
    assert len(missing) == 2 and "missing.png" in missing[0] and "nope.png" in missing[1]


def test_cli_predict_all_formats_and_bad_inputs(tmp_path):
    ckpt = save_checkpoint(fastdpt.create_model(METRIC), tmp_path / "m.safetensors")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(imgs), "--model", str(ckpt), "-o", str(out), "-f", "color", "-f", "png16",
                            "-f", "npy", "-f", "pfm", "-f", "ply", "--focal", "50", "--pred-only", "--cmap", "inferno"])
    assert r.exit_code == 1 and "broken.png" in r.output
    for i in range(2):
        for suffix in (".png", "_depth16.png", ".npy", ".pfm", ".ply"):
            assert (out / f"{i}{suffix}").is_file()
        assert np.asarray(Image.open(out / f"{i}.png")).shape == (40, 70, 3)
        np.testing.assert_array_equal(read_pfm(out / f"{i}.pfm"), np.load(out / f"{i}.npy"))


def test_predictor_runs_one_thread_at_a_time_and_closes_its_backend():
    """Threads sharing one Predictor: every result is the one-thread result, and the network is never
    entered by two threads at once (a slow forward widens the window; without the lock the count rises);
    ``with Predictor(...)`` closes the backend."""
    pred = Predictor(fastdpt.create_model(TINY).eval())
    images = [np.random.default_rng(i).integers(0, 256, (50, 80, 3), dtype=np.uint8) for i in range(4)]
    ref = [pred.predict(im).depth for im in images]
    inside, most, errors, out = [0], [0], [], {}
    count = threading.Lock()
    forward = pred.backend.__class__.__call__

    def slow(backend, x):
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            threading.Event().wait(0.02)
            return forward(backend, x)
        finally:
            with count:
                inside[0] -= 1

    pred.backend.__class__ = type("Slow", (pred.backend.__class__,), {"__call__": slow})

    def work(i):
        try:
            for _ in range(3):
                out[i] = pred.predict(images[i]).depth
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and all(np.array_equal(out[i], ref[i]) for i in range(4))
    assert most[0] == 1
    closed = []
    with Predictor(fastdpt.create_model(TINY).eval()) as p:
        p.backend.close = lambda: closed.append(True)
    assert closed == [True]


def test_onnx_export_matches_pytorch_and_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    from fastdpt.runtime import compare, export_onnx, onnx_config, quantize_int8
    from fastdpt.workflows import verification_inputs

    model = fastdpt.create_model(METRIC).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert onnx_config(path) == METRIC
    err = compare(model, path, verification_inputs(METRIC, METRIC.input_size))
    assert err["max_rel"] < 1e-4, err
    # the .onnx file runs through the Predictor and gives the same depth as PyTorch
    image = np.random.default_rng(3).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    ref = Predictor(model).predict(image).depth
    got = Predictor(str(path), backend="onnxruntime").predict(image).depth
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(fastdpt.FastDPTError, match="calibration"):
        quantize_int8(path, tmp_path / "none.onnx")  # static int8 needs representative inputs from the caller
    calib = [x.numpy() for x in verification_inputs(METRIC, METRIC.input_size, seed=1, frames=4)[1:]]
    q = quantize_int8(path, tmp_path / "m-int8.onnx", calibration=calib)
    assert onnx_config(q) == METRIC and q.stat().st_size < path.stat().st_size
    import onnx

    proto = onnx.load(str(q))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"} <= ops  # static QDQ: int8 convs and matmuls
    assert {p.key: p.value for p in proto.metadata_props}["fastdpt.int8"] == "static"
    dyn = quantize_int8(path, tmp_path / "m-dyn.onnx", method="dynamic")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in onnx.load(str(dyn)).graph.node}
    qerr = compare(model, q, verification_inputs(METRIC, METRIC.input_size))
    assert qerr["max_rel"] < 0.5  # int8 weights: close to, not equal to, fp32
    # the backend exports on the fly from a torch model too
    onnx_pred = Predictor(model, backend="onnxruntime").predict(image).depth
    np.testing.assert_allclose(onnx_pred, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_cli_export(tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = save_checkpoint(fastdpt.create_model(METRIC), tmp_path / "m.safetensors")
    r = runner.invoke(app, ["export", str(ckpt), "--format", "onnx", "--int8", "-o", str(tmp_path / "e.onnx")])
    assert r.exit_code == 0, r.output
    assert "max rel error" in r.output and (tmp_path / "e-int8.onnx").is_file()


def test_backend_errors():
    from fastdpt.runtime import native_bf16

    with pytest.raises(fastdpt.FastDPTError, match="the torch backend runs .*not int8; int8 runs on: onnxruntime"):
        Predictor(fastdpt.create_model(TINY), precision="int8")
    with pytest.raises(fastdpt.FastDPTError, match="backend must be"):
        Predictor(fastdpt.create_model(TINY), backend="tensorrt")
    if not native_bf16():  # emulated bf16 is refused, with the CPU features named
        with pytest.raises(fastdpt.FastDPTError, match="emulated and far slower.*--precision auto"):
            Predictor(fastdpt.create_model(TINY), precision="bf16")
    # fp16 on a CPU is refused as a GPU precision on every CPU (it blamed a missing AVX512-BF16 and then
    # listed avx512_bf16 among the features on CPUs that have it)
    with pytest.raises(fastdpt.FastDPTError, match="fp16 is a GPU precision") as e:
        Predictor(fastdpt.create_model(TINY), precision="fp16")
    assert "AVX512-BF16;" not in str(e.value) and "lacks" not in str(e.value)


def test_onnx_exports_live_in_a_private_folder_removed_with_the_predictor():
    pytest.importorskip("onnxruntime")
    import gc

    pred = Predictor(fastdpt.create_model(METRIC).eval(), backend="onnxruntime")
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    pred.predict(image)
    pred.predict(image)  # the same network size: the cached session, no second export
    folder = pred.backend._tmp
    assert folder and len(list(Path(folder).glob("*.onnx"))) == 1 and pred.backend.cached_shapes == [(64, 96)]
    pred.close()
    assert not Path(folder).exists()
    pred = Predictor(fastdpt.create_model(METRIC).eval(), backend="onnxruntime")
    pred.predict(image)
    folder = pred.backend._tmp
    del pred
    gc.collect()
    assert not Path(folder).exists()  # also when the predictor is simply dropped


def test_int8_without_calibration_is_a_clear_error():
    pytest.importorskip("onnxruntime")
    with pytest.raises(fastdpt.FastDPTError, match="calibration"):
        Predictor(fastdpt.create_model(METRIC), backend="onnxruntime", precision="int8")


def test_the_default_colour_map_needs_no_matplotlib_and_equals_its_table(monkeypatch):
    """Spectral(_r) is built from ColorBrewer's 11 colours: the same uint8 table as matplotlib's map, and
    there without matplotlib installed (it is the study extra's, not the core's)."""
    import sys

    from fastdpt.errors import ImageError
    from fastdpt.viz import lookup_table

    colormaps = pytest.importorskip("matplotlib").colormaps
    ref = {name: (colormaps[name].resampled(256)(np.arange(256))[:, :3] * 255).astype(np.uint8)
           for name in ("Spectral_r", "Spectral")}
    for name in ref:
        np.testing.assert_array_equal(lookup_table(name), ref[name])
    lookup_table.cache_clear()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it raises
    try:
        np.testing.assert_array_equal(lookup_table("Spectral_r"), ref["Spectral_r"])
        with pytest.raises(ImageError, match="needs matplotlib"):
            lookup_table("cividis")
    finally:
        lookup_table.cache_clear()


def test_exporting_for_a_runtime_says_nothing_of_tracing(tmp_path):
    """Each network size is traced once for ONNX / OpenVINO: the model's size checks are constants of that
    size by design, and the tracer's warnings about them were printed by every predict, video and serve."""
    import warnings

    pytest.importorskip("onnx")
    from fastdpt.runtime import export_onnx

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        export_onnx(fastdpt.create_model(METRIC).eval(), tmp_path / "m.onnx")
    assert not [w for w in seen if issubclass(w.category, torch.jit.TracerWarning)], [str(w.message) for w in seen]


def test_an_onnx_file_whose_weights_changed_is_refused(tmp_path):
    """Exports (float and int8) record a digest of their weights; a flipped weight byte is one line when the
    file is opened, instead of running silently with other depths."""
    pytest.importorskip("onnxruntime")
    import onnx

    from fastdpt.runtime import export_onnx

    path = export_onnx(fastdpt.create_model(METRIC).eval(), tmp_path / "m.onnx")
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    Predictor(str(path), backend="onnxruntime").predict(image)  # opens as exported
    proto = onnx.load(str(path))
    big = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(big.raw_data)
    raw[len(raw) // 2] ^= 0x40  # one bit of one weight
    big.raw_data = bytes(raw)
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(fastdpt.FastDPTError, match="not the ones it was exported with"):
        Predictor(str(tmp_path / "bad.onnx"), backend="onnxruntime")


def test_an_output_format_is_one_registration(tmp_path, monkeypatch):
    """A toy format registered here, nothing else touched: predict writes it (and checks what it needs first),
    and the HTTP service answers ?format= with it."""
    pytest.importorskip("fastapi")
    import httpx

    from conftest import running
    from fastdpt.io import OUTPUTS, Output, check_formats, formats
    from fastdpt.serve import create_app

    def csv(depth, kind, **_):
        return "\n".join(",".join(f"{v:.3f}" for v in row) for row in depth).encode()

    monkeypatch.setitem(OUTPUTS, "csv", Output("csv", ".csv", "text/csv", csv, metric_only=True, what="depth as CSV"))
    assert "csv" in formats()
    model = fastdpt.create_model(METRIC).eval()
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-m", str(ckpt), "-o", str(tmp_path / "o"), "-f", "csv"])
    assert r.exit_code == 0, r.output
    depth = Predictor(model).predict(image).depth
    rows = (tmp_path / "o" / "a.csv").read_text().splitlines()
    assert len(rows) == 40 and float(rows[3].split(",")[7]) == pytest.approx(depth[3, 7], abs=1e-3)
    with pytest.raises(fastdpt.FastDPTError, match="csv .depth as CSV. needs metric depth"):
        check_formats(("csv",), kind="relative")
    with running(create_app(Predictor(model))) as port:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        got = httpx.post(f"http://127.0.0.1:{port}/v1/depth?format=csv", content=buf.getvalue(),
                         headers={"Content-Type": "image/png"}, timeout=60)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    assert got.text.splitlines()[3] == rows[3]
