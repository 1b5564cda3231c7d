"""The teacher's depth for every sampled frame, written once as a KITTI-format dense dataset.

Layout of a label folder (a normal data root: ``fastdpt train --data-root DIR --dense-gt`` trains on it)::

    manifest.json                       teacher (canonical name + weights sha256), sampling options,
                                        each sequence's source and its train / held-out frames, counts
    raw/distill/<seq>/image_02/data/<frame:010d>.png                  the frame (RGB PNG)
    dense/<seq>/image_02/<frame:010d>.npy                             float32 label (see below)
    data_depth_annotated/<seq>/proj_depth/groundtruth/image_02/<frame:010d>.png   uint16 label x 256
    splits/train_files_with_gt.txt, splits/val_files_with_gt.txt      BTS-format split lists
    splits/ground_truth_files.txt       the training frames with ground truth (below), when there are any

Metric teachers: the label is depth in metres. Relative teachers (relative inverse depth): the label is
``10 * median(inv) / inv`` (a depth-like map with median 10, 0 where the teacher sees nothing), so the
scale-and-shift-invariant loss in inverse depth sees the teacher's own output up to scale.

Frames with ground truth of their own (``labelled_root``: a KITTI-format data root, as ``fastdpt train
--data-root`` takes it) can join the training split as sequences of kind ``ground truth`` whose label is
that depth (the exact dense map where the root has ``dense/``, else the annotation): the teacher never
labels them and they are never held out. ``splits/ground_truth_files.txt`` lists them, so that trimming
the loss's largest residuals (meant for the teacher's errors) leaves them whole (``fastdpt train
--exact-split``).

Held-out frames are chosen by sequence (the last sequences, or ``val_sources``); a single sequence
is cut into a training head and a held-out tail with a gap of unlabelled frames between, so no
held-out frame neighbours a training one. Every file is written atomically and a frame counts as
labelled only when both label files exist, so an interrupted run (Ctrl-C, a full disk, a dead
worker) resumes where it stopped and never labels a frame twice.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.kitti import SplitEntry, write_split
from ..errors import DataError, LabelError, WeightsNotFoundError
from ..io import atomic_write, read_image, write_depth_png, write_png
from .sources import SampleCounts, Sampled, sample

FORMAT = "fastdpt-labels/1"
DATE = "distill"
RELATIVE_MEDIAN = 10.0
NOMINAL_FOCAL = 0.8  # x image width, when a source has no calibration (recorded as such)
GROUND_TRUTH = "ground truth"  # the kind of a sequence labelled by given depth, not by the teacher


# -- the teacher ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Teacher:
    """What labels the frames: ``source`` as given (preset, checkpoint or ``.onnx``), the weights file,
    the variant's canonical ``name``, its output ``kind`` and the weights' ``sha256``."""

    source: str
    weights: str
    name: str
    kind: str
    sha256: str

    @property
    def onnx(self) -> bool:
        return self.weights.endswith(".onnx")

    def identity(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}


def resolve_teacher(teacher: str | os.PathLike, weights: str | os.PathLike | None = None,
                    allow_download: bool = True) -> Teacher:
    """A teacher from a preset with weights (from ``weights``, the cache or a download), a fastdpt
    checkpoint, or an ONNX file exported by ``fastdpt export``."""
    from ..hub import resolve_weights, sha256_file
    from ..presets import PRESETS, get_config, preset_with_weights
    from ..runtime import onnx_config
    from ..weights import read_checkpoint_config

    text = str(teacher)
    path = Path(text)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise WeightsNotFoundError(f"teacher not found: {path}")
        cfg, file = onnx_config(path), path
    elif path.suffix == ".safetensors" or path.is_file():
        if not path.is_file():
            raise WeightsNotFoundError(f"teacher not found: {path}")
        cfg = read_checkpoint_config(path)
        if cfg is None:
            raise WeightsNotFoundError(f"{path} carries no fastdpt config: give the teacher as a preset with "
                                       "--teacher-weights FILE, or a fastdpt checkpoint")
        file = path
    else:
        cfg = get_config(text)
        preset = text if text in PRESETS else preset_with_weights(cfg)
        if weights is None and preset is None:
            raise WeightsNotFoundError(f"teacher {cfg.name} has no published weights: pass a checkpoint trained for it")
        file = resolve_weights(preset or text, weights, allow_download=allow_download, flag="--teacher-weights")
    return Teacher(text, str(Path(file).resolve()), cfg.name, cfg.output_kind, sha256_file(file))


def teacher_predictor(t: Teacher, device: str = "cpu", threads: int | None = None, backend: str = "auto",
                      precision: str = "auto"):
    """The teacher behind the fastest runtime this process has: the GPU runtime's bf16 CUDA-graph
    backend on a GPU; on a CPU ``backend`` (``auto``: OpenVINO / ONNX Runtime / torch) in ``precision``
    (``auto``: bf16 where the CPU runs it natively, see :mod:`fastdpt.runtime.cpu`)."""
    import torch

    from ..predict import Predictor
    from ..runtime import RuntimeOptions

    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        options = RuntimeOptions("cudagraph", "bf16", device)
    else:  # auto precision: the best the backend runs natively here (fp32 without bf16 units)
        options = RuntimeOptions(backend, precision, device, threads)
    if t.onnx or read_is_checkpoint(t.weights):  # the file carries its variant
        return Predictor(t.weights, options=options)
    return Predictor(t.source, t.weights, options=options)


def check_teacher(t: Teacher) -> int | None:
    """Load the teacher's weights once (then drop them), so that a file that does not fit the variant is
    refused in one line before a frame is sampled or a folder made (an ONNX teacher was opened already);
    returns its parameter count (None for ONNX)."""
    if t.onnx:
        return None
    from ..api import load

    if Path(t.source).is_file():  # a checkpoint: its own variant
        model = load(t.weights)
    else:  # a name: the weights must be that variant's (a checkpoint of another is refused, not run instead)
        model = load(t.source, t.weights, allow_download=False)
    return sum(p.numel() for p in model.parameters())


def read_is_checkpoint(path: str) -> bool:
    from ..weights import read_checkpoint_config

    return path.endswith(".safetensors") and read_checkpoint_config(path) is not None


LABEL_BATCH = 4  # frames the teacher takes at once: requests in flight together on OpenVINO, a batch on a GPU


def teacher_depths(predictor, frames: list[np.ndarray], hflip: bool = False) -> list[np.ndarray]:
    """The teacher's output for each frame (metres, or relative inverse depth), the frames run together
    (``Predictor.predict_many``: OpenVINO's throughput-mode requests, a batch on a GPU); with ``hflip`` each
    the mean of the frame's and its mirror image's outputs (mirrored back)."""
    if not hflip:
        return [r.depth for r in predictor.predict_many(frames)]
    images = [im for f in frames for im in (f, np.ascontiguousarray(f[:, ::-1]))]
    out = predictor.predict_many(images)
    return [0.5 * (a.depth + b.depth[:, ::-1]) for a, b in zip(out[::2], out[1::2])]


def to_label(output: np.ndarray, kind: str) -> np.ndarray:
    """The stored label (metres for metric teachers, depth-like for relative ones; 0 = none)."""
    out = np.asarray(output, dtype=np.float32)
    if kind == "metric":
        return np.where(np.isfinite(out) & (out > 0), out, 0.0).astype(np.float32)
    valid = np.isfinite(out) & (out > 0)
    if not valid.any():
        return np.zeros_like(out)
    med = float(np.median(out[valid]))
    valid &= out > 1e-3 * med
    return np.where(valid, RELATIVE_MEDIAN * med / np.where(valid, out, 1.0), 0.0).astype(np.float32)


# -- the folder ------------------------------------------------------------------------------------------
def _disk_error(e: OSError, path: Path, done: int) -> DataError:
    if e.errno == errno.ENOSPC:
        return DataError(f"the disk is full (writing {path}): the {done} labels written so far stay valid; "
                         "free some space and run again with --resume")
    return DataError(f"cannot write {path}: {e.strerror or e}")


@dataclass
class LabelStats:
    """What a labelling run did: frames seen / kept / skipped as near-duplicates / unreadable, frames
    labelled now, frames found already labelled, teacher calls, seconds, frames/s."""

    seen: int = 0
    kept: int = 0
    duplicates: int = 0
    unreadable: int = 0
    gap: int = 0
    ground_truth: int = 0
    train: int = 0
    val: int = 0
    labelled: int = 0
    already: int = 0
    teacher_frames: int = 0
    retries: int = 0
    seconds: float = 0.0
    workers: int = 1

    @property
    def fps(self) -> float:
        return self.labelled / self.seconds if self.seconds else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "fps": round(self.fps, 4) if self.labelled else None}


class LabelSet:
    """A label folder on disk (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # paths
    def rel(self, seq: str, index: int) -> str:
        return f"{DATE}/{seq}/image_02/data/{index:010d}.png"

    def frame(self, rel: str) -> Path:
        return self.root / "raw" / rel

    def dense(self, rel: str) -> Path:
        _, seq, cam, _, name = rel.split("/")
        return self.root / "dense" / seq / cam / (Path(name).stem + ".npy")

    def annotation_rel(self, rel: str) -> str:
        _, seq, cam, _, name = rel.split("/")
        return f"{seq}/proj_depth/groundtruth/{cam}/{name}"

    def annotation(self, rel: str) -> Path:
        return self.root / "data_depth_annotated" / self.annotation_rel(rel)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def split_path(self, split: str) -> Path:
        return self.root / "splits" / f"{split}_files_with_gt.txt"

    @property
    def ground_truth_path(self) -> Path:
        """The split list of the training frames with ground truth (written only when there are any)."""
        return self.root / "splits" / "ground_truth_files.txt"

    # state
    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            data = json.loads(self.manifest_path.read_text())
        except ValueError as e:
            raise LabelError(f"{self.manifest_path} cannot be read ({e}); choose another --out") from None
        if data.get("format") != FORMAT:
            raise LabelError(f"{self.manifest_path} is not a fastdpt label manifest; choose another --out")
        return data

    def save_manifest(self, data: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path, lambda p: p.write_text(json.dumps(data, indent=1)))

    def done(self, rel: str) -> bool:
        return self.dense(rel).is_file() and self.annotation(rel).is_file()

    def frames(self, split: str | None = None, ground_truth: bool = False) -> list[str]:
        """The rel paths of the frames the teacher labels (``split``: train / val / None for both), in
        order; ``ground_truth``: the frames labelled by given depth instead."""
        m = self.manifest() or {}
        out = []
        for name, s in m.get("sequences", {}).items():
            if (s.get("kind") == GROUND_TRUTH) != ground_truth:
                continue
            for sp in ((split,) if split else ("train", "val")):
                out += [self.rel(name, i) for i in s.get(sp, [])]
        return out

    def read_label(self, rel: str) -> np.ndarray:
        return np.load(self.dense(rel))

    def write_label(self, rel: str, label: np.ndarray) -> None:
        dense = self.dense(rel)
        dense.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dense, lambda p: np.save(p, label.astype(np.float32)))
        png = self.annotation(rel)
        png.parent.mkdir(parents=True, exist_ok=True)
        write_depth_png(png, label)  # written last: its presence marks the frame as labelled

    def entries(self, split: str) -> list[SplitEntry]:
        """The split's frames as split-list entries (rgb under raw/, annotation, focal); the training
        split includes the frames with ground truth."""
        return _entries(self, self.manifest() or {"sequences": {}}, split)

    def frame_sizes(self, split: str) -> set[tuple[int, int]]:
        """The distinct (height, width) of the split's frames, read from the PNG headers."""
        from PIL import Image

        sizes = set()
        for e in self.entries(split):
            with Image.open(self.frame(e.rgb)) as im:
                sizes.add((im.height, im.width))
        return sizes


# -- the plan: sample, extract, split ---------------------------------------------------------------------
def _split_sequences(kept: dict[str, list[int]], val_names: set[str], val_fraction: float) -> dict[str, dict]:
    """Train / held-out frames of each sequence: whole sequences held out (``val_names``, else the last
    sequences until ``val_fraction`` of the frames); one sequence alone: head / gap / tail."""
    names = [n for n in kept if kept[n]]
    if not names:
        raise DataError("no frame left to label (every frame unreadable or a near-duplicate)")
    total = sum(len(kept[n]) for n in names)
    held = [n for n in names if n in val_names]
    if not held and len(names) >= 2:
        for n in reversed(names[1:]):
            held.append(n)
            if sum(len(kept[h]) for h in held) >= val_fraction * total:
                break
    plan = {}
    if held:
        for n in names:
            plan[n] = {"train": [] if n in held else kept[n], "val": kept[n] if n in held else [], "gap": []}
        if not any(p["train"] for p in plan.values()):
            raise DataError("every sequence is held out: give training frames beside --val-frames")
        return plan
    frames = kept[names[0]]
    if len(frames) < 4:
        raise DataError(f"only {len(frames)} frames to label: too few to hold any out; give more frames or --val-frames")
    n_val = max(1, round(val_fraction * len(frames)))
    gap = max(1, len(frames) // 20)
    if len(frames) - n_val - gap < 1:
        gap = 1
    plan[names[0]] = {"train": frames[:len(frames) - n_val - gap], "gap": frames[len(frames) - n_val - gap:-n_val],
                      "val": frames[-n_val:]}
    return plan


def prepare(labels: LabelSet, teacher: Teacher, sources: list, val_sources: list = (), every: int = 1,
            max_frames: int | None = None, duplicate_level: float = 1.0, val_fraction: float = 0.2,
            hflip: bool = False, resume: bool = False, progress: Callable[[str], None] | None = None,
            labelled_root: str | os.PathLike | None = None, labelled_split: str | os.PathLike | None = None) -> dict:
    """Check the folder, then sample the sources and write the frames, the split and the manifest (once;
    a resumed run keeps them); with ``labelled_root``, copy in the frames with ground truth of
    ``labelled_split`` (default ``<root>/splits/train_files_with_gt.txt``) as training frames. Returns
    the manifest."""
    from .sources import discover

    m = labels.manifest()
    options = {"every": every, "max_frames": max_frames, "duplicate_level": duplicate_level, "hflip": hflip,
               "val_fraction": val_fraction, "sources": [str(Path(s).resolve()) for s in sources],
               "val_sources": [str(Path(s).resolve()) for s in val_sources]}
    if labelled_root is not None:  # only then: runs made without it resume as before
        options["labelled"] = [str(Path(labelled_root).resolve()),
                               str(Path(labelled_split).resolve()) if labelled_split else None]
    if m is not None:
        if m["teacher"] != teacher.identity():
            raise LabelError(f"{labels.root} holds labels of another teacher ({m['teacher']['name']}, sha256 "
                             f"{m['teacher']['sha256'][:12]}); labels of two teachers never mix: choose another --out")
        if not resume:
            raise LabelError(f"{labels.root} already holds labels ({len(labels.frames())} frames planned); pass --resume "
                             "to continue, or choose another --out")
        if m.get("options") != options:
            diff = [k for k in options if m.get("options", {}).get(k) != options[k]]
            raise LabelError(f"--resume with other labelling options than the run's ({', '.join(diff)}); give the same "
                             "options or choose another --out")
        if m.get("planned"):
            return m
    elif labels.root.exists() and any(labels.root.iterdir()):
        raise LabelError(f"{labels.root} is not empty and holds no labels; choose another --out")
    m = {"format": FORMAT, "teacher": teacher.identity(), "teacher_source": teacher.source, "kind": teacher.kind,
         "options": options, "planned": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    labels.save_manifest(m)  # the teacher is named before any frame is written

    taken: set[str] = set()  # one name per sequence across --frames and --val-frames
    train_seqs = discover(list(sources), taken)
    val_seqs = discover(list(val_sources), taken) if val_sources else []
    val_paths = {s.path.resolve() for s in val_seqs}  # a held-out sequence inside --frames is held out only
    seqs = [s for s in train_seqs if s.path.resolve() not in val_paths] + val_seqs
    counts = SampleCounts()
    kept: dict[str, list[int]] = {s.name: [] for s in seqs}
    focal: dict[str, float] = {}
    written = 0

    def keep(s: Sampled) -> None:
        nonlocal written
        rel = labels.rel(s.sequence.name, s.index)
        path = labels.frame(rel)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_png(path, s.frame)
            except OSError as e:
                raise _disk_error(e, path, 0) from None
        kept[s.sequence.name].append(s.index)
        focal.setdefault(s.sequence.name, s.sequence.focal or NOMINAL_FOCAL * s.frame.shape[1])
        written += 1
        if progress and written % 25 == 0:
            progress(f"sampled {written} frames")

    sample(seqs, every, max_frames, duplicate_level, counts, keep)
    plan = _split_sequences(kept, {s.name for s in val_seqs}, val_fraction)
    by_name = {s.name: s for s in seqs}
    m["sequences"] = {n: {"source": str(by_name[n].path), "kind": by_name[n].kind, "focal": focal[n],
                          "focal_known": by_name[n].focal is not None, **plan[n]} for n in plan}
    m["counts"] = {"seen": counts.seen, "kept": counts.kept, "duplicates": counts.duplicates,
                   "unreadable": counts.unreadable, "too_small": counts.too_small,
                   "gap": sum(len(p["gap"]) for p in plan.values())}
    if labelled_root is not None:
        held_out = {f.resolve() for s in seqs if plan.get(s.name, {}).get("val") for f in s.files}
        given = _import_ground_truth(labels, labelled_root, labelled_split, held_out, set(m["sequences"]), progress)
        m["sequences"].update(given)
        m["counts"]["ground_truth"] = sum(len(g["train"]) for g in given.values())
    m["planned"] = True
    for split in ("train", "val"):
        write_split(_entries(labels, m, split), labels.split_path(split))
    exact = {n: s for n, s in m["sequences"].items() if s.get("kind") == GROUND_TRUTH}
    if exact:
        write_split(_entries(labels, {"sequences": exact}, "train"), labels.ground_truth_path)
    labels.save_manifest(m)
    return m


def labelled_frames(root, split=None):
    """The frames of ``split`` (default ``<root>/splits/train_files_with_gt.txt``) under the
    KITTI-format ``root`` that have an image and ground truth (the dense map where the root has
    ``dense/``), as a dataset; a clear :class:`DataError` when there is none. Cheap (no image read)."""
    from ..data.augment import Augment
    from ..data.kitti import DataPaths, KittiDepthDataset, read_split

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"labelled data root not found: {root}")
    paths = DataPaths.resolve(data_root=root, train_split=split)
    split_file = paths.splits["train_split"]
    if not split_file.is_file():
        raise DataError(f"split list of the labelled frames not found: {split_file} (pass --labelled-split)")
    return KittiDepthDataset(read_split(split_file), paths.raw_root, paths.gt_root, augment=Augment.none(kb_crop=False),
                             dense_root=paths.dense_root)


def _import_ground_truth(labels: LabelSet, root, split, held_out: set[Path], taken: set[str],
                         progress: Callable[[str], None] | None) -> dict[str, dict]:
    """Copy the frames of ``split`` under the KITTI-format ``root`` that have ground truth into the
    label folder (frame as PNG, its depth as the label), one training sequence per drive and camera.
    Refuses a frame that is also among the held-out footage (``held_out``: resolved image paths)."""
    from .sources import unique_name

    root = Path(root)
    ds = labelled_frames(root, split)
    names: dict[tuple[str, str], str] = {}
    seqs: dict[str, dict] = {}
    seen: set[tuple[str, int]] = set()  # (sequence, frame) already copied: a frame listed twice counts once
    copied = 0
    for i, (entry, _) in enumerate(ds.items):
        image = (ds.raw_root / entry.rgb).resolve()
        if image in held_out:
            raise DataError(f"{image} is both a labelled frame and a held-out one: the student would be validated "
                            "on a frame it trained on; hold out other footage (--val-frames)")
        key = (Path(entry.rgb).parts[1] if len(Path(entry.rgb).parts) > 1 else "frames", entry.camera)
        if key not in names:
            names[key] = unique_name(f"gt-{key[0]}-cam{key[1]}", taken)
        name = names[key]
        stem = Path(entry.rgb).stem
        index = int(stem) if stem.isdigit() else i
        seq = seqs.setdefault(name, {"source": str(root.resolve()), "kind": GROUND_TRUTH, "focal": None,
                                     "focal_known": True, "train": [], "val": [], "gap": []})
        if (name, index) in seen:
            continue
        seen.add((name, index))
        rel = labels.rel(name, index)
        item = ds[i]
        if seq["focal"] is None:
            seq["focal"] = float(item["focal"])
        if not labels.done(rel):
            path = labels.frame(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            frame = (item["image"].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            try:
                write_png(path, frame)
                labels.write_label(rel, item["depth"].numpy())
            except OSError as e:
                raise _disk_error(e, path, 0) from None
        seq["train"].append(index)
        copied += 1
        if progress and copied % 25 == 0:
            progress(f"copied {copied} frames with ground truth")
    return seqs


def _entries(labels: LabelSet, m: dict, split: str) -> list[SplitEntry]:
    out = []
    for name, s in m["sequences"].items():
        for i in s.get(split, []):
            rel = labels.rel(name, i)
            out.append(SplitEntry(rel, labels.annotation_rel(rel), round(float(s["focal"]), 4)))
    return out


# -- labelling ------------------------------------------------------------------------------------------------
class Labeller:
    """Holds one teacher (loaded once) and labels frames given as PNG bytes; a Ray actor on a cluster."""

    def __init__(self, teacher: dict, threads: int | None = None, fail_once: str | None = None,
                 backend: str = "auto") -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = teacher_predictor(Teacher(**teacher), device, threads, backend)
        self.kind = teacher["kind"]
        self.fail_once = fail_once

    def label(self, frames: list[bytes], hflip: bool) -> list[np.ndarray]:
        from ..io import decode_image

        if self.fail_once:  # fault injection for tests: the first shard on any worker fails, once
            try:
                os.close(os.open(self.fail_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                raise RuntimeError("injected labelling failure")
        images = [decode_image(b, label="frame") for b in frames]
        return [to_label(d, self.kind) for d in teacher_depths(self.predictor, images, hflip)]


def label(labels: LabelSet, teacher: Teacher, hflip: bool = False, workers: int = 1, address: str | None = None,
          threads: int | None = None, shard_size: int = 8, max_retries: int = 2,
          progress: Callable[[int, int, float, float], None] | None = None, fail_once: str | None = None,
          stop_after: int | None = None, backend: str = "auto") -> LabelStats:
    """Label every planned frame that has no label yet: in this process (``workers`` 1, no address) or
    on Ray (``workers`` actors, each holding the teacher; a failed shard is retried ``max_retries``
    times). ``progress(done, total, frames_per_s, eta_s)``; ``stop_after`` labels at most that many
    frames (for tests of resumption)."""
    m = labels.manifest()
    if not m or not m.get("planned"):
        raise LabelError(f"{labels.root} has no planned frames (run prepare first)")
    todo = [r for r in labels.frames() if not labels.done(r)]
    stats = LabelStats(**{k: v for k, v in m["counts"].items()
                          if k in ("seen", "kept", "duplicates", "unreadable", "gap", "ground_truth")})
    stats.train, stats.val = len(labels.frames("train")), len(labels.frames("val"))
    stats.already = stats.train + stats.val - len(todo)
    if stop_after is not None:
        todo = todo[:stop_after]
    t0 = time.perf_counter()

    def done(n: int) -> None:
        stats.labelled += n
        stats.seconds = time.perf_counter() - t0
        if progress:
            fps = stats.labelled / stats.seconds if stats.seconds else 0.0
            progress(stats.labelled, len(todo), fps, (len(todo) - stats.labelled) / fps if fps else float("nan"))

    if todo:
        if workers <= 1 and not address:
            _label_here(labels, teacher, todo, hflip, threads, stats, done, backend)
        else:
            _label_on_ray(labels, teacher, todo, hflip, workers, address, threads, shard_size, max_retries, stats,
                          done, fail_once, backend)
    stats.seconds = time.perf_counter() - t0
    return stats


def _write(labels: LabelSet, rel: str, lab: np.ndarray, stats: LabelStats) -> None:
    try:
        labels.write_label(rel, lab)
    except OSError as e:
        raise _disk_error(e, labels.dense(rel), stats.already + stats.labelled) from None


def _label_here(labels, teacher, todo, hflip, threads, stats, done, backend) -> None:
    import torch

    predictor = teacher_predictor(teacher, "cuda" if torch.cuda.is_available() else "cpu", threads, backend)
    try:
        for i in range(0, len(todo), LABEL_BATCH):  # an interruption loses at most these frames' labels
            rels = todo[i:i + LABEL_BATCH]
            for rel, depth in zip(rels, teacher_depths(predictor, [read_image(labels.frame(r)) for r in rels], hflip)):
                stats.teacher_frames += 1
                _write(labels, rel, to_label(depth, teacher.kind), stats)
                done(1)
    finally:
        predictor.close()


def _label_on_ray(labels, teacher, todo, hflip, workers, address, threads, shard_size, max_retries, stats, done,
                  fail_once, backend) -> None:
    from ..cluster import ray_session

    shards = [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
    with ray_session(address, verbose=0) as ray:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if not address and workers <= 1:
            workers = 1
        workers = max(1, min(workers, len(shards)))
        cpus = max(1.0, float(resources.get("CPU", 1)) // workers) if not gpus else 1.0
        actor_cls = ray.remote(num_cpus=cpus, num_gpus=1 if gpus else 0, max_restarts=max_retries)(Labeller)
        tdict = asdict(teacher)
        actors = [actor_cls.remote(tdict, threads or int(cpus), fail_once, backend) for _ in range(workers)]
        stats.workers = workers
        tries: dict[int, int] = {}
        pending: dict = {}
        queue = list(range(len(shards)))
        idle = list(actors)

        def submit(actor) -> None:
            k = queue.pop(0)
            data = [labels.frame(r).read_bytes() for r in shards[k]]
            pending[actor.label.remote(data, hflip)] = (k, actor)

        try:
            while queue and idle:
                submit(idle.pop())
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                k, actor = pending.pop(ready[0])
                try:
                    outputs = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - a worker's error or death: retry the shard
                    tries[k] = tries.get(k, 0) + 1
                    stats.retries += 1
                    if tries[k] > max_retries:
                        raise LabelError(f"labelling shard {k} failed {tries[k]} times: "
                                         f"{str(e).strip().splitlines()[-1][:200]}") from None
                    queue.insert(0, k)
                    submit(actor)
                    continue
                for rel, lab in zip(shards[k], outputs):
                    stats.teacher_frames += 1
                    _write(labels, rel, lab, stats)
                done(len(outputs))
                if queue:
                    submit(actor)
        finally:
            for a in actors:
                ray.kill(a)
