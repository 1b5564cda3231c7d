"""The study on Ray Tune, on synthetic KITTI-format data with tiny variants and a step budget:
a grid end to end with its results table and report, a trial that fails once and is retried, an
interrupted study that resumes without training finished trials again, and the same grid on a real
local Ray cluster started with `ray start --head` on 127.0.0.1."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("lightning")

from typer.testing import CliRunner  # noqa: E402

from fastdpt.cli import app  # noqa: E402
from fastdpt.data.synthetic import synth  # noqa: E402
from fastdpt.study.grid import load_grid  # noqa: E402
from fastdpt.study.results import load_results, pareto_front  # noqa: E402
from fastdpt.study.sweep import run_study, status  # noqa: E402
from conftest import ray_head  # noqa: E402

GRID = """
backbone: [effb0]
hooks: [[0, 1], [0, 2]]
attention: [softmax, performer32]
heads: 4
features: 32
input_size: [64, 192]
output: m0.01_0.0125
train:
  max_steps: 4
  batch_size: 2
  workers: 0
  lr: 0.001
  kb_crop: false
"""
QUICK = dict(bench_frame=(64, 192), bench_runs=1, verbose=0, resources="cpu=2", timing_rounds=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth(out, drives=3, frames=14, size=(64, 192), seed=4, workers=1)
    return out


def _grid(tmp_path, text=GRID):
    path = tmp_path / "grid.yaml"
    path.write_text(text.replace("performer32", "performer"))
    return path


def _trainings(study: Path) -> dict:
    return {p.parent.name: len(p.read_text().splitlines()) for p in (study / "trials").glob("*/trainings.log")}


def test_grid_files_expand_to_trials(tmp_path):
    specs = load_grid(_grid(tmp_path))
    assert [s.model for s in specs] == [
        "effb0.h0-1.heads4.softmax.f32.m0.01_0.0125@64x192", "effb0.h0-1.heads4.performer.f32.m0.01_0.0125@64x192",
        "effb0.h0-2.heads4.softmax.f32.m0.01_0.0125@64x192", "effb0.h0-2.heads4.performer.f32.m0.01_0.0125@64x192"]
    assert all(s.train["max_steps"] == 4 for s in specs)
    two = load_grid(_grid(tmp_path, GRID.replace("lr: 0.001", "lr: [0.001, 0.0003]")))
    assert len(two) == 8 and two[1].id.endswith("~lr=0.0003")
    assert len(load_grid("study@192x640")) == 36
    three = load_grid(_grid(tmp_path, GRID + "compress: [none, prune-0.3, prune-heads0.5-mlp0.25+qat-int8]\n"))
    assert len(three) == 4 and three[0].compress == ["prune-0.3", "prune-heads0.5-mlp0.25+qat-int8"]
    assert three[0].row_ids() == [three[0].id, three[0].id + "~compress=prune-0.3",
                                  three[0].id + "~compress=prune-heads0.5-mlp0.25+qat-int8"]
    from fastdpt.errors import ConfigError

    for bad, match in (("[prune-1.5]", r"\(0, 1\)"), ("[qat-int4]", "qat-int4"), ("[none, none]", "repeat"),
                       ("[prune-0.3+prune-0.2]", "twice"), ("[prune-depth0.3]", "PART")):
        with pytest.raises(ConfigError, match=match):
            load_grid(_grid(tmp_path, GRID + f"compress: {bad}\n"))
    from fastdpt.study.sweep import fit_resources, parse_resources

    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert fit_resources(nodes, None) == {"cpu": 16.0, "gpu": 1.0}  # a trial per node, the largest live one
    assert fit_resources(nodes, parse_resources("cpu=8,gpu=1")) == {"cpu": 8.0, "gpu": 1.0}
    with pytest.raises(ConfigError, match="largest has 16 CPUs, 2 GPUs"):
        fit_resources(nodes, parse_resources("cpu=32"))  # the dead 64-CPU node does not count


COMPRESSED = GRID.replace("attention: [softmax, performer32]", "attention: [softmax]").replace(
    "hooks: [[0, 1], [0, 2]]", "hooks: [[0, 2]]") + "compress: [none, prune-0.5+qat-int8]\n"


@pytest.mark.ray
def test_a_grid_runs_end_to_end_with_a_retried_trial_and_a_compress_axis(data, tmp_path):
    """A variant x two compression levels (none; pruned by half + recovered + quantisation-aware int8): a
    row per combination, each scored and timed, the trial failing once and retried, the report."""
    study = tmp_path / "study"
    flaky = "effb0.h0-2.heads4.softmax.f32.m0.01_0.0125@64x192"
    marker = tmp_path / "failed-once"
    rows = run_study(str(_grid(tmp_path, COMPRESSED)), study, data, max_failures=2, fail_once={flaky: str(marker)},
                     **{**QUICK, "timing_rounds": 2})
    table = json.loads((study / "results.json").read_text())
    assert table == json.loads(json.dumps(rows)) and (study / "results.csv").is_file()
    by = {r["name"]: r for r in table}
    base = next(r for r in table if r.get("baseline"))
    assert base["model"] == "r50.h8-11.heads12.softmax.f256.m0.01_0.0125@64x192" and base["speedup"] == 1.0
    trials = [r for r in table if not r.get("baseline")]
    assert sorted(r["name"] for r in trials) == sorted(
        f"{flaky}{c}" for c in ("", "~compress=prune-0.5+qat-int8"))
    assert all(r["status"] == "ok" for r in trials), [(r["name"], r.get("error")) for r in trials]
    for r in trials:
        for key in ("d1", "abs_rel", "rmse", "silog", "fps", "latency_ms_median", "params", "macs", "speedup", "file_mb"):
            assert isinstance(r[key], (int, float)) and r[key] == r[key], (r["name"], key)
        assert r["speedup"] == pytest.approx(base["latency_ms_median"] / r["latency_ms_median"], rel=1e-2)
        assert len(r["rounds_latency_ms"]) == 2 and r["latency_ms_median"] == pytest.approx(
            sum(r["rounds_latency_ms"]) / 2, rel=1e-3)  # timed again in 2 interleaved rounds: their median
    for r in (t for t in trials if t.get("compress")):  # the trained model, pruned, recovered, int8
        plain = by[r["compressed_from"]]
        assert r["compress"] == "prune-0.5+qat-int8" and r["runtime"] == "openvino int8" and r["recover"] == "train"
        assert r["params"] < plain["params"] and r["macs"] < plain["macs"] and r["checkpoint"].endswith("model-int8.xml")
        assert Path(r["checkpoint"]).is_file() and Path(r["weights"]).is_file() and r.get("train_s") is None
    assert all(isinstance(r["train_s"], float) for r in trials if not r.get("compress"))
    # the injected failure: retried from the last checkpoint, and then finished
    assert marker.is_file() and by[flaky]["attempts"] == 2 and by[flaky]["steps"] == 4
    assert _trainings(study)[flaky.replace("/", "_")] == 2
    st = status(study)
    assert len(st["done"]) == 3 and not st["failed"] and not st["waiting"]  # the baseline, the trial, compressed
    # MLflow: one parent run for the study, a child per trial
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fastdpt-study").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3
    child = next(c for c in children if c.data.tags["fastdpt.model"] == flaky)
    assert child.data.params["canonical_name"] == flaky and "study/abs_rel" in child.data.metrics
    # the report, from the results table alone (+ the checkpoints for the qualitative grid)
    r = CliRunner().invoke(app, ["study", "report", str(study), "-o", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Accuracy by compress" in md and "## Accuracy by hooks" not in md
    assert "Pareto front" in md and all(f"| {r['name']} |" in md for r in table)
    assert "file MB" in md and "openvino int8" in md
    assert "not from KITTI" in md
    front = pareto_front([t for t in trials])
    assert all(f"`{t['name']}`" in md for t in front)
    for fig in ("accuracy_vs_fps.png", "fps_by_factor.png", "qualitative.png"):
        assert (tmp_path / "report" / "figures" / fig).stat().st_size > 1000
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src='figures" not in page  # self-contained
    _check_in_chromium(tmp_path / "report" / "report.html", images=3)


def _check_in_chromium(page: Path, images: int) -> None:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chrome and driver):
        if os.environ.get("FASTDPT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromedriver are required (FASTDPT_REQUIRE_BROWSER=1)")
        return
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.get(page.resolve().as_uri())
        loaded = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert loaded == [True] * images
        assert browser.execute_script("return document.querySelectorAll('table').length") >= 2
    finally:
        browser.quit()


@pytest.mark.ray
def test_an_interrupted_study_resumes_without_training_finished_trials_again(data, tmp_path):
    study = tmp_path / "study"
    grid = _grid(tmp_path, GRID.replace("max_steps: 4", "max_steps: 6").replace(
        "attention: [softmax, performer32]", "attention: [softmax]").replace("hooks: [[0, 1], [0, 2]]",
                                                                             "hooks: [[0, 1], [0, 2], [1, 2]]"))
    cmd = [sys.executable, "-m", "fastdpt.cli", "study", "run", str(grid), "--out", str(study), "--data-root", str(data),
           "--resources", "cpu=2", "--bench-runs", "1", "--baseline", "none", "--timing-rounds", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [json.loads(p.read_text()) for p in (study / "rows").glob("*.json")] if (study / "rows").is_dir() else []
        if sum(r["status"] == "ok" for r in done) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the study finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the driver and the trial it is running
    proc.wait(timeout=120)
    before = {r["name"]: r for r in (json.loads(p.read_text()) for p in (study / "rows").glob("*.json"))}
    finished = {n for n, r in before.items() if r["status"] == "ok"}
    assert 2 <= len(finished) < 3
    rows = run_study(str(grid), study, data, resume=True, **QUICK)
    assert sorted(r["status"] for r in rows) == ["ok"] * 3
    counts = _trainings(study)
    for name in finished:
        assert counts[name] == 1  # not trained again
        assert next(r for r in rows if r["name"] == name)["finished"] == before[name]["finished"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
def test_the_same_grid_on_a_local_ray_cluster_beside_another(data, tmp_path, monkeypatch):
    """`fastdpt study run --address 127.0.0.1:PORT` (a fresh process, as a user runs it) reaches a head started
    on 127.0.0.1 while a second, unrelated head runs on the machine; only the heads the test started are
    stopped (no `ray stop --force`). The user has a Ray token (a local Ray >= 2.59 writes ~/.ray/auth_token,
    so `ray start --head` then demands it): the command sends it, as Ray's own heads decide."""
    import secrets

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(16))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # an earlier local Ray in this process sets it
    with ray_head(cpus=1) as other, ray_head(cpus=2) as address:
        grid = _grid(tmp_path, GRID.replace("hooks: [[0, 1], [0, 2]]", "hooks: [[0, 1]]").replace(
            "attention: [softmax, performer32]", "attention: [softmax]"))

        def study(at, out):
            return subprocess.run([sys.executable, "-m", "fastdpt.cli", "study", "run", str(grid), "--out", str(out),
                                   "--data-root", str(data), "--address", at, "--baseline", "none", "--bench-runs", "1",
                                   "--resources", "cpu=2", "--timing-rounds", "0"], capture_output=True, text=True,
                                  timeout=600)

        # a trial no node can hold is refused at once (it stayed pending forever), before anything is written
        r = study(other, tmp_path / "too-big")
        assert r.returncode == 2 and "no node of the Ray cluster" in r.stderr + r.stdout, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and not (tmp_path / "too-big" / "study.json").exists()
        r = study(address, tmp_path / "study")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        rows = load_results(tmp_path / "study")
        assert [row["status"] for row in rows] == ["ok"]
        assert rows[0]["host"] == socket.gethostname()
        assert other != address


@pytest.mark.ray
def test_an_unreachable_cluster_is_one_line_and_writes_nothing(data, tmp_path):
    port = _free_port()  # nothing listens there
    r = CliRunner().invoke(app, ["study", "run", "r50.h0-1.heads12.softmax.f32.m0.01_0.0125@64x192", "--data-root",
                                 str(data), "--out", str(tmp_path / "s"), "--address", f"127.0.0.1:{port}"])
    assert r.exit_code == 2, r.output
    assert f"127.0.0.1:{port}" in r.output and "ray start --head" in r.output
    assert len(r.output.strip().splitlines()) <= 3 and "Traceback" not in r.output
    assert not (tmp_path / "s" / "study.json").exists()


def test_the_study_settings_are_declared_once_and_an_unknown_one_is_refused(data, tmp_path, monkeypatch):
    # every setting a study shares is a StudySettings field, passed by its own name from the command line
    # through run_study (no second list of them); a misspelt one is refused before Ray starts or a file is written
    from fastdpt.errors import ConfigError
    from fastdpt.study.trial import StudySettings

    with pytest.raises(ConfigError, match="unknown study option bench_frmae"):
        run_study("r50.h0-1.heads12.softmax.f32.m0.01_0.0125@64x192", tmp_path / "s", data, bench_frmae=(64, 192))
    assert not (tmp_path / "s").exists()
    monkeypatch.chdir(data.parent)
    s = StudySettings.new("s", "g", data_root=data.name, epochs=2, train={"lr": 1e-4, "epochs": 9},
                          test_split=f"{data.name}/splits/test_files_with_gt.txt", init="kitti", bench_sizes=[[64, 192]])
    assert s.out == str((data.parent / "s").resolve())
    assert s.data_root == str(data.resolve()) and Path(s.test_split).is_absolute() and Path(s.test_split).is_file()
    assert s.train == {"lr": 1e-4, "epochs": 2} and s.init == "kitti"  # a hub name stays a name
    assert s.bench_sizes == [(64, 192)] and s.bench_frame == (352, 1216)
    with pytest.raises(ConfigError, match="parent_run_id"):  # set by the study itself, not an option
        StudySettings.new("s", "g", parent_run_id="x")


def test_a_study_folder_from_another_version_loads_with_its_unknown_settings_named(tmp_path):
    from fastdpt.study.trial import StudySettings

    StudySettings.new(tmp_path / "s", "g", bench_runs=3).save()
    stored = json.loads((tmp_path / "s" / "study.json").read_text())
    stored["cache_limit_gb"] = 40  # a setting a newer fastdpt writes
    (tmp_path / "s" / "study.json").write_text(json.dumps(stored))
    with pytest.warns(UserWarning, match="cache_limit_gb"):
        s = StudySettings.load(tmp_path / "s")
    assert s.bench_runs == 3 and s.out == stored["out"]
    del stored["bench_runs"], stored["cache_limit_gb"]  # an older one: a missing setting takes its default
    (tmp_path / "s" / "study.json").write_text(json.dumps(stored))
    assert StudySettings.load(tmp_path / "s").bench_runs == StudySettings("x").bench_runs


def test_attention_benchmark_and_its_crossover(tmp_path):
    r = CliRunner().invoke(app, ["bench", "attention", "--runs", "1", "--warmup", "0", "--threads", "2",
                                 "--json", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "a.json").read_text())
    kernels = {row["kernel"] for row in d["rows"]}
    assert {"sdpa", "math", "favor", "favor64", "favor128"} <= kernels
    assert {row["tokens"] for row in d["rows"]} == {144, 576, 1024, 2304, 4096, 9216}
    skipped = [row for row in d["rows"] if row.get("skipped")]
    assert all(row["kernel"] == "math" and row["heads"] * row["tokens"] ** 2 * 4 > 2 * 2**30 for row in skipped)
    assert set(d["crossover"]) == {"1", "12", "24"} and "overtakes SDPA" in r.output


def test_report_summary_and_wall_time_follow_the_rows():
    from fastdpt.study.report import full_table, summary

    def row(name, abs_rel, fps, **kw):
        return {"name": name, "model": name, "status": "ok", "abs_rel": abs_rel, "fps": fps, **kw}

    rows = [row("r50.h8-11.heads12.softmax@192x640~baseline", 0.40, 1.0, status="baseline", baseline=True),
            row("r50.h0-1.heads12.softmax@192x640", 0.42, 2.0, started=100.0, finished=160.5),
            row("r50.h8-11.heads12.softmax@192x640", 0.40, 1.0),
            row("effb0.h0-1.heads12.softmax@192x640", 0.60, 2.4),
            row("effb0.h8-11.heads12.softmax@192x640", 0.50, 1.2)]
    lines = summary(rows)
    # hooks: (8,11) -> (0,1): mean FPS 1.1 -> 2.2 (one doubling), mean AbsRel 0.45 -> 0.51
    hooks = next(s for s in lines if "**hooks**" in s)
    assert "2.00x faster" in hooks and "+0.0600" in hooks and "costs 0.0600 AbsRel per doubling" in hooks
    # backbone: r50 (FPS 1.5, AbsRel 0.41) -> effb0 (FPS 1.8, AbsRel 0.55): log2(1.2) doublings
    import math
    back = next(s for s in lines if s.startswith("backbone"))
    assert "1.20x faster" in back and "+0.1400" in back and f"{0.14 / math.log2(1.2):+.4f} per doubling" in back
    # the best variant at >= 2x the baseline's FPS (1.0) is the most accurate of those at >= 2 FPS
    assert any("At >= 2x" in s and "`r50.h0-1.heads12.softmax@192x640`" in s for s in lines)
    head, body = full_table(rows)
    assert body[1][head.index("wall s")] == "60" and body[2][head.index("wall s")] == "-"


@pytest.mark.ray
def test_a_local_ray_session_lives_in_a_private_folder_that_goes_with_it():
    """Ray started here keeps its session (logs, sockets; 0777 folders inside) under a 0700 folder of its
    own, removed when the session ends (they were left under /tmp/ray, open to every user, for good)."""
    from fastdpt.cluster import ray_session

    with ray_session(num_cpus=1, verbose=0) as ray:
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        private = session.parent.parent if session.parent.name == "ray" else session.parent
        assert session.is_dir() and private.name.startswith("fastdpt-ray-"), session
        assert private.stat().st_mode & 0o777 == 0o700
    assert not private.exists()


def test_study_out_must_be_a_folder_of_its_own_before_ray_starts(data, tmp_path, monkeypatch):
    import fastdpt.cluster

    monkeypatch.setattr(fastdpt.cluster, "ray_module", lambda: pytest.fail("Ray was started"))
    (tmp_path / "file").write_text("keep")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "splits.txt").write_text("keep")
    for out, words in [(tmp_path / "file", "is a file"), (tmp_path / "dataset", "holds no study")]:
        r = CliRunner().invoke(app, ["study", "run", "r50.h0-1.heads12.softmax.f32.m0.01_0.0125@64x192", "--data-root",
                                     str(data), "--out", str(out)])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
    assert (tmp_path / "file").read_text() == "keep" and os.listdir(tmp_path / "dataset") == ["splits.txt"]


def test_a_study_stopped_by_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    """Ray Tune stops its trials on Ctrl-C and returns: unfinished trials are 'stopped, --resume', not 'no trial
    succeeded (0 of 1 failed)'; a KeyboardInterrupt out of the study says the same."""
    import fastdpt.study.sweep as sweep
    from fastdpt.study.trial import StudySettings

    def stopped(grid, out, *a, **k):
        StudySettings.new(out, "g").save()
        (Path(out) / "trials.json").write_text(json.dumps([{"id": "t1", "model": "fast-effb0-f64-128x416"}]))
        return []

    monkeypatch.setattr(sweep, "run_study", stopped)
    r = CliRunner().invoke(app, ["study", "run", "fast-effb0-f64-128x416", "--out", str(tmp_path / "s")])
    assert r.exit_code == 130 and "no trial succeeded" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("interrupted: 1 trial(s) of the study") and "--resume" in r.output

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_study", ctrl_c)
    r = CliRunner().invoke(app, ["study", "run", "fast-effb0-f64-128x416", "--out", str(tmp_path / "t")])
    assert r.exit_code == 130 and "--resume" in r.output and "Traceback" not in r.output, r.output


def test_study_run_takes_every_shared_setting_by_its_field_name(tmp_path, monkeypatch):
    """``study run``'s flags are StudySettings' fields (derived, not a second list): every value given on the
    command line reaches run_study under the field's name, converted as the field's type says."""
    from dataclasses import fields

    import fastdpt.study.sweep as sweep
    from fastdpt.study.settings import StudySettings

    seen = {}

    def capture(grid, out, data_root=None, **kw):
        seen.update(grid=grid, out=out, data_root=data_root, **kw)
        StudySettings.new(out, grid).save()
        (Path(out) / "trials.json").write_text("[]")
        return []

    monkeypatch.setattr(sweep, "run_study", capture)
    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["study", "run", "g.yaml", "--out", str(out), "--data-root", "d", "--raw-root", "r",
                                 "--gt-root", "g", "--train-split", "a", "--val-split", "b", "--test-split", "c",
                                 "--init", "w", "--backbone-weights", "hub", "--bench-frame", "64x192", "--bench-runs", "2",
                                 "--bench-warmup", "0", "--train-baseline", "--tracking-uri", "http://t", "--baseline",
                                 "none", "--bench-size", "64x192", "--bench-size", "32x96", "--max-steps", "7"])
    assert r.exit_code == 0, r.output
    assert seen == {"grid": "g.yaml", "out": str(out), "data_root": "d", "raw_root": "r", "gt_root": "g",
                    "train_split": "a", "val_split": "b", "test_split": "c", "init": "w", "backbone_weights": "hub",
                    "bench_frame": (64, 192), "bench_runs": 2, "bench_warmup": 0, "train_baseline": True,
                    "tracking_uri": "http://t", "baseline": "none", "bench_sizes": [(64, 192), (32, 96)],
                    "epochs": None, "max_steps": 7, "address": None, "resources": None, "max_failures": 2,
                    "resume": False, "max_trials": seen["max_trials"], "timing_rounds": 3}
    shared = {f.name for f in fields(StudySettings)} - {"train", "parent_run_id", "grid", "out", "data_root"}
    assert shared <= set(seen)  # every setting the trials share has its flag
