"""``StudySettings``: what every trial of a study shares (stored as ``STUDY/study.json``). Importing it costs
no torch: ``fastdpt study run`` derives its options from these fields (:func:`fastdpt.cli.common.dataclass_command`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError, FastDPTError
from ..io import write_text
from ..options import option


@dataclass
class StudySettings:
    """What every trial of a study shares; stored as ``STUDY/study.json``."""

    out: str = field(metadata={"help": "the study folder (shared storage for a cluster)", "required": True})
    data_root: str | None = option("KITTI-format root (raw/, data_depth_annotated/, splits/)")
    raw_root: str | None = option("KITTI raw root (default <data-root>/raw)")
    gt_root: str | None = option("annotated depth root (default <data-root>/data_depth_annotated)")
    train_split: str | None = option("training split list")
    val_split: str | None = option("validation split list")
    test_split: str | None = option("test split list (the trials are scored on it)")
    init: str | None = option("warm-start weights for every trial (e.g. the official KITTI file)")
    backbone_weights: str | None = option("timm ImageNet weights for new CNN tensors, or 'hub'")
    train: dict = field(default_factory=dict)  # TrainConfig options for every trial (the grid's override these)
    bench_frame: tuple[int, int] = option("frames fed to the benchmark, HxW (KITTI after the KB crop)", (352, 1216))
    bench_sizes: list = field(default_factory=list)  # network sizes each variant is timed at ([]: its own)
    bench_runs: int = option("timed runs of each variant", 5)
    bench_warmup: int = option("warm-up runs before timing", 1)
    train_baseline: bool = option("also train the baseline (otherwise only timed)", False)
    tracking_uri: str | None = option("MLflow server (default: SQLite in the study)")
    parent_run_id: str | None = None
    grid: str = ""
    baseline: str | None = option("reference variant (default: DPT-Hybrid at the grid's size; 'none')")

    def save(self) -> None:
        Path(self.out).mkdir(parents=True, exist_ok=True)
        write_text(Path(self.out) / "study.json", json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def new(cls, out: str | os.PathLike, grid: str = "", epochs: int | None = None, max_steps: int | None = None,
            **options) -> "StudySettings":
        """A new study's settings from options named as the fields are (``epochs`` / ``max_steps`` go
        into ``train``); the data paths, and weights given as existing files, become absolute (Ray's
        workers run in other folders). An unknown option is refused in one line."""
        names = {f.name for f in fields(cls)} - {"out", "grid", "parent_run_id"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"unknown study option {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        train = dict(options.pop("train", None) or {})
        train.update({k: v for k, v in (("epochs", epochs), ("max_steps", max_steps)) if v is not None})
        s = cls(out=str(Path(out).resolve()), grid=str(grid), train=train, **options)
        for name in ("data_root", "raw_root", "gt_root", "train_split", "val_split", "test_split"):
            value = getattr(s, name)
            setattr(s, name, str(Path(value).resolve()) if value else None)
        for name in ("init", "backbone_weights"):  # a file, or a name resolved by the hub
            value = getattr(s, name)
            if value and Path(value).exists():
                setattr(s, name, str(Path(value).resolve()))
        s.bench_frame, s.bench_sizes = tuple(s.bench_frame), [tuple(v) for v in s.bench_sizes]
        return s

    @classmethod
    def load(cls, study: str | os.PathLike) -> "StudySettings":
        path = Path(study) / "study.json"
        if not path.is_file():
            raise FastDPTError(f"{study} is not a study folder (no study.json)")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # written by another fastdpt version: what this one knows is read, the rest named once
            import warnings

            warnings.warn(f"{path}: ignoring settings this fastdpt does not know ({', '.join(unknown)}); "
                          "the study was made by another version", stacklevel=2)
            data = {k: v for k, v in data.items() if k in known}
        data["bench_frame"] = tuple(data.get("bench_frame", (352, 1216)))
        data["bench_sizes"] = [tuple(s) for s in data.get("bench_sizes", [])]
        return cls(**data)

    @property
    def tracking(self) -> str:
        return self.tracking_uri or f"sqlite:///{(Path(self.out) / 'mlflow.db').resolve()}"

    def paths(self):
        from ..data.kitti import DataPaths

        return DataPaths.resolve(self.data_root, self.raw_root, self.gt_root, train_split=self.train_split,
                                 val_split=self.val_split, test_split=self.test_split)
