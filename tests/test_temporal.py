"""Temporal stability: the flicker score, the temporal alignment error with poses from OXTS files, and
the causal stabiliser, on synthetic drives whose exact depth and camera path are known."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import fastdpt
from conftest import TINY
from fastdpt.cli import app
from fastdpt.data.kitti import drive_poses, intrinsics_matrix, read_split
from fastdpt.data.synthetic import CAM_HEIGHT, DATE, FPS, camera_pose, make_scene, render, synth
from fastdpt.evaluation.temporal import FlickerMeter, flicker, pair_alignment_error, temporal_alignment_error
from fastdpt.stabilize import Stabilizer, stabilize_sequence
from fastdpt.weights import save_checkpoint

SIZE = (96, 320)


@pytest.fixture(scope="module")
def drive():
    """12 frames of one synthetic drive: RGB and exact depth."""
    scene = make_scene(np.random.default_rng(8), 12)
    frames, depths = zip(*(render(scene, f, SIZE) for f in range(12)))
    return scene, list(frames), [d.astype(np.float32) for d in depths]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth(out, drives=2, frames=14, size=SIZE, seed=9, workers=1)
    return out


def _jitter(depths, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return [d * np.float32(1 + rng.normal(0, sigma)) for d in depths]


def test_flicker_is_zero_for_a_static_scene_and_grows_with_scale_noise(drive):
    scene, frames, depths = drive
    static_f, static_d = [frames[3]] * 6, [depths[3]] * 6  # the same frame rendered again and again
    assert flicker(static_f, static_d, "metric") < 1e-6
    scores = [flicker(static_f, _jitter(static_d, s), "metric") for s in (0.01, 0.03, 0.1)]
    assert 0 < scores[0] < scores[1] < scores[2]
    assert scores[1] == pytest.approx(0.03 * 2 / np.sqrt(np.pi), rel=0.6)  # E|e1 - e2| for e ~ N(0, s)
    moving = flicker(frames, depths, "metric")  # exact depth of a moving drive: flow errors only
    assert moving < flicker(frames, _jitter(depths, 0.05), "metric")
    meter = FlickerMeter()
    for f, d in zip(frames, depths):
        meter.update(f, d, "metric")
    assert len(meter.per_pair) == 11 and meter.score == pytest.approx(moving)
    # units do not matter: the same depth in other units, or as relative inverse depth, scores the same
    assert flicker(frames, [d * 3.0 for d in depths], "metric") == pytest.approx(moving, rel=1e-4)
    rel = [np.where(d > 0, 1.0 / np.maximum(d, 1e-3), 0).astype(np.float32) * 5 for d in depths]
    assert flicker(frames, rel, "relative") == pytest.approx(moving, rel=0.2)


def test_oxts_poses_written_by_synth_read_back_as_the_camera_path(data):
    entries = read_split(data / "splits" / "test_files_with_gt.txt")
    folder = "/".join(entries[0].rgb.split("/")[:2])
    poses = drive_poses(data / "raw", folder, list(range(14)))
    K = intrinsics_matrix(data / "raw", DATE)
    assert K[0, 0] > 0 and K[0, 2] == pytest.approx(SIZE[1] * 609.5593 / 1242, rel=1e-4)
    # the camera moves forward along +z by speed / FPS a frame: compare with the renderer's own path
    rng = np.random.default_rng(9)
    scenes = [make_scene(rng, 14) for _ in range(2)]
    truth = [camera_pose(scenes[1], f)[0] for f in range(14)]
    for t in range(13):
        step = np.linalg.norm(poses[t + 1][:3, 3] - poses[t][:3, 3])
        assert step == pytest.approx(np.linalg.norm(truth[t + 1] - truth[t]), rel=1e-3)
    assert poses[0][:3, :3] @ np.array([0, 0, 1.0]) == pytest.approx(
        [np.cos(np.pi / 2 - camera_pose(scenes[1], 0)[1]), np.sin(np.pi / 2 - camera_pose(scenes[1], 0)[1]), 0], abs=1e-6)
    assert CAM_HEIGHT > 0 and FPS == 10.0


def test_reprojection_with_the_poses_reproduces_the_next_frames_depth(data):
    """Exact depth moved with the OXTS poses lands on the next frame's exact depth: mean relative error
    under 1 % on static pixels (the rest is bilinear sampling at depth edges); wrong poses do not."""
    entries = read_split(data / "splits" / "test_files_with_gt.txt")
    folder = "/".join(entries[0].rgb.split("/")[:2])
    drive = folder.split("/")[1]
    dense = [np.load(data / "dense" / drive / "image_02" / f"{f:010d}.npy") for f in range(14)]
    poses = drive_poses(data / "raw", folder, list(range(14)))
    K = intrinsics_matrix(data / "raw", DATE)
    res = temporal_alignment_error(dense, K, poses, dense)
    assert res["tae"] < 0.01 and res["pairs"] == 13 and res["pixels"] > 13 * 2 * 0.3 * SIZE[0] * SIZE[1]
    wrong = [poses[0]] * 14  # as if the camera stood still
    e, n = pair_alignment_error(dense[0], dense[1], K, np.linalg.inv(wrong[1]) @ wrong[0])
    assert e > 5 * res["tae"]
    noisy = temporal_alignment_error(_jitter(dense, 0.05), K, poses, dense)
    assert noisy["tae"] > 3 * res["tae"]


def test_stabilisation_is_causal(drive):
    _, frames, depths = drive
    noisy = _jitter(depths, 0.05, seed=1)
    for mode in ("scale", "flow"):
        batch = stabilize_sequence(frames, noisy, mode)
        online = Stabilizer(mode, "metric")
        for t, (f, d) in enumerate(zip(frames, noisy)):
            np.testing.assert_array_equal(online(f, d), batch[t])  # frame by frame = the whole sequence
        changed = noisy[:6] + [d * 1.7 for d in noisy[6:]]  # change the future
        again = stabilize_sequence(frames, changed, mode)
        for t in range(6):
            np.testing.assert_array_equal(again[t], batch[t])  # the past never saw it


def test_stabilisation_reduces_flicker_of_scale_noise(drive):
    _, frames, depths = drive
    noisy = _jitter(depths, 0.05, seed=2)
    base = flicker(frames, noisy, "metric")
    for mode in ("scale", "flow"):
        out = stabilize_sequence(frames, noisy, mode)
        assert flicker(frames, out, "metric") < 0.7 * base, mode
        valid = [d > 0 for d in depths]
        err = np.mean([np.mean(np.abs(o[v] - d[v]) / d[v]) for o, d, v in zip(out, depths, valid)])
        raw = np.mean([np.mean(np.abs(n[v] - d[v]) / d[v]) for n, d, v in zip(noisy, depths, valid)])
        assert err < 1.05 * raw  # and does not cost accuracy


def test_flow_mode_settles_small_changes_and_follows_large_ones(drive):
    """A still camera (the same frame twice): where the new prediction differs a little from the last
    output it is pulled towards it; where it differs a lot (something moved) it is kept."""
    _, frames, depths = drive
    d0 = depths[0].copy()
    d0[d0 <= 0] = 50.0
    d1 = d0 * np.float32(1.04)  # a 4 % wobble everywhere
    box = (slice(40, 70), slice(100, 160))
    d1[box] = d0[box] * 0.4  # and an object that came 2.5x nearer
    s = Stabilizer("flow", "metric")
    s(frames[0], d0)
    out = s(frames[0], d1)
    inner = (slice(45, 65), slice(110, 150))
    wobble = np.median(np.abs(out / d0 - 1)[:30])  # rows above the box
    assert wobble < 0.5 * 0.04  # settled: less than half of the wobble is left
    np.testing.assert_allclose(np.median(out[inner] / d1[inner]), 1.0, atol=0.15)  # the object is followed


def test_the_meter_reuses_the_stabilisers_flow_with_the_same_score(drive):
    _, frames, depths = drive
    noisy = _jitter(depths, 0.05, seed=4)
    stab, shared, own = Stabilizer("flow", "metric"), FlickerMeter(), FlickerMeter()
    for f, d in zip(frames, noisy):
        out = stab(f, d)
        assert (stab.pair_flow is None) == (shared.prev is None)  # a flow exactly when there is a pair
        shared.update(f, out, "metric", flow=stab.pair_flow)
        own.update(f, out, "metric")
    assert len(shared.per_pair) == len(frames) - 1
    np.testing.assert_allclose(shared.per_pair, own.per_pair, rtol=1e-6)  # DIS is deterministic
    # a flow of another size is not used: the meter computes its own
    m = FlickerMeter()
    m.update(frames[0], noisy[0], "metric")
    m.update(frames[1], noisy[1], "metric", flow=np.zeros((7, 9, 2), np.float32))
    np.testing.assert_allclose(m.per_pair, [flicker(frames[:2], noisy[:2], "metric")], rtol=1e-6)


def test_a_scene_cut_resets_the_state(drive):
    _, frames, depths = drive
    other = make_scene(np.random.default_rng(99), 6)
    cut_f, cut_d = zip(*(render(other, f, SIZE) for f in range(3)))
    seq_f = frames[:4] + list(cut_f)
    seq_d = _jitter(depths[:4] + list(cut_d), 0.05, seed=3)
    s = Stabilizer("flow", "metric")
    out = [s(f, d) for f, d in zip(seq_f, seq_d)]
    assert s.resets == 1
    np.testing.assert_allclose(out[4], seq_d[4], rtol=1e-5)  # the first frame after the cut is left as it is
    s.reset()
    np.testing.assert_allclose(s(seq_f[2], seq_d[2]), seq_d[2], rtol=1e-5)


def test_cli_streams_report_flicker_and_stabilise(data, tmp_path):
    ckpt = save_checkpoint(fastdpt.create_model(TINY.replace(metric=(0.01, 0.0125))), tmp_path / "m.safetensors")
    entries = read_split(data / "splits" / "test_files_with_gt.txt")
    folder = data / "raw" / "/".join(entries[0].rgb.split("/")[:3]) / "data"
    runner = CliRunner()
    stats = {}
    for mode in ("none", "flow"):
        r = runner.invoke(app, ["stream", str(folder), "-m", str(ckpt), "--stabilize", mode, "--stats", str(tmp_path / f"{mode}.json")])
        assert r.exit_code == 0, r.output
        assert "flicker" in r.output
        stats[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
        assert stats[mode]["stabilize"] == mode and stats[mode]["flicker"] >= 0
    assert stats["flow"]["stabilize_ms_median"] > 0
    r = runner.invoke(app, ["stream", str(folder), "-m", str(ckpt)])  # not asked for: not measured
    assert r.exit_code == 0 and "frames out of" in r.output and "flicker" not in r.output
    r = runner.invoke(app, ["stream", str(folder), "-m", str(ckpt), "--stabilize", "wobble"])
    assert r.exit_code == 2 and "--stabilize must be one of" in r.output
    r = runner.invoke(app, ["eval", "--weights", str(ckpt), "--data-root", str(data), "--temporal", "--stabilize", "scale",
                            "--json", str(tmp_path / "t.json")])
    assert r.exit_code == 0, r.output
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["frames"] == 14 and t["drives"] == 1 and t["stabilize"] == "scale"
    assert t["tae"] == t["tae"] and t["flicker"] >= 0 and t["annotated"] == 4


def test_predictor_stream_object(drive):
    _, frames, _ = drive
    pred = fastdpt.Predictor(fastdpt.create_model(TINY.replace(metric=(0.01, 0.0125))).eval())
    stream = pred.stream("flow")
    first = stream.predict(frames[0])
    np.testing.assert_allclose(first.depth, pred.predict(frames[0]).depth, rtol=1e-5)  # nothing to blend yet
    second = stream.predict(frames[1])
    assert second.depth.shape == frames[1].shape[:2] and second.kind == "metric"
    stream.reset()
    np.testing.assert_allclose(stream.predict(frames[1]).depth, pred.predict(frames[1]).depth, rtol=1e-5)
