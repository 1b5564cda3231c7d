"""``run_study``: a grid of trials on Ray Tune, on this machine or a Ray cluster.

Local by default: Ray starts in this process and trials run one after the other (each takes every
CPU, or a GPU each when there are GPUs). With ``address`` (``auto`` after ``ray start --head`` on this
machine, ``host:port``, or ``ray://host:10001``) trials spread over the cluster; ``out`` must then be
on storage every node sees (NFS), since trials write their rows, runs and checkpoints there.

Fault tolerance: a trial that raises (or whose worker dies) is retried up to ``max_failures`` times and
resumes its training from its last ``resume.ckpt``; a trial that diverges (non-finite loss) is recorded
as failed with its reason and not retried; ``resume=True`` continues an interrupted study
(``Tuner.restore``) and never trains a finished trial again.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError, FastDPTError
from ..io import write_text
from ..presets import get_config
from .grid import MAX_TRIALS, TrialSpec, default_baseline, load_grid, row_ids
from .results import assemble, read_row, read_rows, row_path, write_row
from .trial import StudySettings, run_trial

EXPERIMENT = "fastdpt-study"


def _trainable(config: dict) -> None:
    """The Ray Tune function trainable: one trial."""
    from ray import tune

    spec = TrialSpec(**config["trial"])
    settings = StudySettings.load(config["study"])

    def report(metrics: dict, run: Path | None) -> None:
        if run is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            Path(d, "run.json").write_text(json.dumps({"run": str(run)}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    # a retry gets the checkpoint it last reported; it points at the run folder whose resume.ckpt the
    # training continues from
    run_trial(spec, settings, report, resumed=tune.get_checkpoint() is not None)


def parse_resources(text: str) -> dict:
    """``cpu=4,gpu=1`` -> {"cpu": 4.0, "gpu": 1.0} (the default, none given, is :func:`fit_resources`')."""
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("cpu", "gpu") or not value:
            raise ConfigError(f"--resources takes cpu=N,gpu=M, got {text!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--resources takes numbers, got {part!r}") from None
    return out


def fit_resources(nodes: list[dict], resources: dict | None) -> dict:
    """What one trial takes, checked against the live nodes of the cluster (``ray.nodes()``): by default a
    whole node (the largest one's CPUs, and a GPU where nodes have one), so trials run one per node; a
    request no node can hold is refused in one line (Ray Tune would leave the trial pending forever)."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    cpus = max((float(r.get("CPU", 0)) for r in alive), default=0.0)
    gpus = max((float(r.get("GPU", 0)) for r in alive), default=0.0)
    if not resources:
        return {"cpu": cpus, "gpu": 1.0 if gpus >= 1 else 0.0}
    res = dict(resources)
    if not any(float(r.get("CPU", 0)) >= res.get("cpu", 0) and float(r.get("GPU", 0)) >= res.get("gpu", 0)
               for r in alive):
        raise ConfigError(f"a trial asks for cpu={res.get('cpu', 0):g},gpu={res.get('gpu', 0):g} but no node of the Ray "
                          f"cluster has that much (the largest has {cpus:g} CPUs, {gpus:g} GPUs): lower --resources")
    return res


def _parent_run(settings: StudySettings) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        EXPERIMENT, artifact_location=None if settings.tracking_uri else (Path(settings.out) / "mlartifacts").resolve().as_uri())
    run = client.create_run(exp_id, run_name=Path(settings.out).name, tags={"fastdpt.grid": settings.grid})
    client.log_param(run.info.run_id, "grid", settings.grid[:500])
    client.log_param(run.info.run_id, "baseline", settings.baseline)
    for k, v in settings.train.items():
        client.log_param(run.info.run_id, f"train.{k}", v)
    return run.info.run_id


def run_study(grid, out: str | os.PathLike, data_root: str | os.PathLike | None = None, *, address: str | None = None,
              resources: str | dict | None = None, max_failures: int = 2, resume: bool = False,
              fail_once: dict | None = None, verbose: int = 1, max_trials: int = MAX_TRIALS, timing_rounds: int = 3,
              **options) -> list[dict]:
    """Run the grid and return the results table (also in ``out/results.json`` and ``results.csv``).

    ``grid``: a preset group, a list of names, or a YAML/JSON file of axes (see :mod:`.grid`).
    ``options``: what every trial shares, named as :class:`~.trial.StudySettings`' fields (``raw_root``,
    ``gt_root``, ``train_split`` / ``val_split`` / ``test_split``, ``init``, ``backbone_weights``, ``train``
    (TrainConfig options), ``bench_sizes``, ``bench_runs``, ``bench_frame``, ``baseline``,
    ``train_baseline``, ``tracking_uri``), plus ``epochs`` and ``max_steps`` for ``train``; a resumed study
    keeps its own.
    ``baseline``: the reference variant, timed in the same run (default: the unmodified DPT-Hybrid at
    the grid's input size; ``"none"`` for no baseline), trained only with ``train_baseline``.
    ``fail_once``: {trial id: marker path} fault injection for tests.
    ``timing_rounds``: after the trials, every finished variant is timed again in this many
    interleaved rounds on this machine (see :func:`retime`); below 2, each trial's own timing stays.
    """
    from ray import tune

    from ..cluster import ray_session

    out = Path(out).resolve()
    wanted = StudySettings.new(out, grid, data_root=data_root, **options)  # an unknown option: before anything
    specs = load_grid(grid, max_trials)
    if not specs:
        raise ConfigError("the grid is empty")
    if resume and not (out / "study.json").is_file():
        raise FastDPTError(f"nothing to resume: {out} holds no study")
    if not resume and (out / "study.json").exists():
        raise FastDPTError(f"{out} already holds a study: pass --resume to continue it or choose another --out")
    if out.exists() and not out.is_dir():
        raise FastDPTError(f"--out {out} is a file: a study needs a folder of its own")
    if not resume and out.is_dir() and any(out.iterdir()):  # a distillation, a dataset, anything else: not ours
        raise FastDPTError(f"--out {out} is a non-empty folder that holds no study: choose a new or empty folder "
                           "(a study writes trials, rows and Ray's state there)")
    if isinstance(resources, str) and resources:
        resources = parse_resources(resources)  # a malformed --resources: before Ray starts
    with ray_session(address, verbose=verbose) as ray:  # Ray is up (or refused) before anything is written
        res = fit_resources(ray.nodes(), resources)
        if resume:
            settings = StudySettings.load(out)
            specs = [TrialSpec(**s) for s in json.loads((out / "trials.json").read_text())]
        else:
            settings, specs = _new_study(specs, wanted, fail_once)
        try:
            storage = str(out / "ray")
            trainable = tune.with_resources(_trainable, res)
            lost = forget_lost_trials(out) if resume else []
            name = "tune" if not lost else f"tune-{len(list(Path(storage).glob('tune*')))}"
            if resume and not lost and tune.Tuner.can_restore(os.path.join(storage, "tune")):
                tuner = tune.Tuner.restore(os.path.join(storage, "tune"), trainable=trainable, resume_errored=True)
            else:  # a new study, or a resume that must train lost trials again (finished ones return their rows)
                tuner = tune.Tuner(
                    trainable,
                    param_space={"trial": tune.grid_search([s.as_dict() for s in specs]), "study": str(out)},
                    tune_config=tune.TuneConfig(reuse_actors=False),
                    run_config=tune.RunConfig(name=name, storage_path=storage, verbose=verbose,
                                              failure_config=tune.FailureConfig(max_failures=max_failures),
                                              checkpoint_config=tune.CheckpointConfig()))  # tiny pointer files, kept
            grid_result = tuner.fit()
            for r in grid_result:  # trials that failed for good: their row says why
                if r.error is not None:
                    tid = r.config["trial"]["id"] if r.config else None
                    row = read_row(out, tid) if tid else None
                    if row is not None and row.get("status") == "running":
                        row.update(status="failed", error=_first_line(r.error))
                        write_row(out, row)
            retime(out, settings, timing_rounds)
        finally:
            rows = assemble(out)
    return rows


def retime(out: Path, settings, rounds: int = 3, say=print) -> None:
    """Time every finished variant again, interleaved: ``rounds`` rounds, each timing every variant in
    turn (``bench_runs`` steps after a warm-up), so a load change hits all of them alike. Each row keeps
    its rounds (``rounds_latency_ms``); its latency and FPS become the median over rounds, and
    :func:`~.results.with_speedups` derives each speed-up's spread from them. One noisy pass per trial
    (timed whenever the trial ended) once showed performer 1.79x faster than softmax at equal GMACs."""
    from statistics import median

    from .trial import bench_row

    rows = [r for r in read_rows(out) if r.get("status") in ("ok", "baseline") and r.get("model")]
    if rounds < 2 or len(rows) < 2:
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    times: dict[str, list[float]] = {r["name"]: [] for r in rows}
    for k in range(rounds):
        say(f"timing round {k + 1}/{rounds}: {len(rows)} variants, interleaved")
        for r in rows:
            b = bench_row(r, settings, r.get("device") or device)
            times[r["name"]].append(round(b.latency_ms_median, 3))
    for r in rows:
        lat = median(times[r["name"]])
        size = "x".join(str(v) for v in get_config(r["model"]).input_size)
        r.update(rounds_latency_ms=times[r["name"]], latency_ms_median=lat, fps=1000.0 / lat,
                 timing=f"{rounds} interleaved rounds of {settings.bench_runs} steps on {r.get('device') or device}")
        if f"latency_ms_{size}" in r:  # the variant's own size: the same figure
            r[f"latency_ms_{size}"], r[f"fps_{size}"] = lat, 1000.0 / lat
        write_row(out, r)


def forget_lost_trials(out: Path) -> list[str]:
    """Finished trials whose checkpoint is gone (their trial folder was deleted): their rows are
    removed so that a resumed study trains them again instead of reporting them as ok."""
    lost = []
    for row in read_rows(out):
        ckpt = row.get("checkpoint")
        trained = row.get("steps") is not None
        if row.get("status") in ("ok", "baseline") and trained and ckpt and not Path(ckpt).is_file():
            row_path(out, row["name"]).unlink(missing_ok=True)
            lost.append(row["name"])
            print(f"{row['name']}: finished, but {ckpt} is gone (its trial folder was deleted): trained again",
                  file=sys.stderr)
    return lost


def _new_study(specs: list[TrialSpec], settings: StudySettings, fail_once: dict | None):
    """Write a new study's settings (its baseline resolved), trials and MLflow parent run."""
    base = None if settings.baseline == "none" else (settings.baseline or default_baseline(specs))
    if base is not None:
        base = get_config(base).name
        if base in {s.id for s in specs}:  # a grid member is always trained; its row is the speed reference too
            specs = [TrialSpec(**{**s.as_dict(), "baseline": True}) if s.id == base else s for s in specs]
            settings.train_baseline = True
        else:  # an extra row, trained only when asked, with the grid's options, as the first trial
            specs = [TrialSpec(f"{base}~baseline", base, dict(specs[0].train), baseline=True)] + specs
    settings.baseline = base
    out = Path(settings.out)
    settings.paths()  # the data is named before anything starts
    if fail_once:
        specs = [TrialSpec(**{**s.as_dict(), "fail_once": fail_once.get(s.id)}) for s in specs]
    settings.save()
    write_text(out / "trials.json", json.dumps([s.as_dict() for s in specs], indent=1))
    settings.parent_run_id = _parent_run(settings)
    settings.save()
    return settings, specs


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    useful = [line for line in text if "Error" in line or "error" in line]
    return (useful[-1] if useful else (text[-1] if text else repr(error)))[:500]


def status(study: str | os.PathLike) -> dict:
    """Trials done / running / failed (with each failure's reason) / waiting, from the rows."""
    study = Path(study)
    if not (study / "study.json").is_file():
        raise FastDPTError(f"{study} is not a study folder (no study.json)")
    planned = json.loads((study / "trials.json").read_text()) if (study / "trials.json").is_file() else []
    rows = {r["name"]: r for r in read_rows(study)}
    out = {"done": [], "running": [], "failed": [], "waiting": []}
    for name in (n for spec in planned for n in row_ids(spec["id"], spec.get("compress", ()))):
        r = rows.get(name)
        if r is None:
            out["waiting"].append({"name": name})
        elif r["status"] in ("ok", "baseline"):
            out["done"].append({"name": r["name"], "abs_rel": r.get("abs_rel"), "fps": r.get("fps")})
        elif r["status"] == "failed":
            out["failed"].append({"name": r["name"], "error": r.get("error"), "attempts": r.get("attempts")})
        else:
            out["running"].append({"name": r["name"], "host": r.get("host"), "attempts": r.get("attempts")})
    return out
