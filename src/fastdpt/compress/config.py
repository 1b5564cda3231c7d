"""``CompressConfig``: the options of ``fastdpt compress`` (stored in ``report.json``); importing it costs
no torch, so the command line derives its options from it quickly."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..options import at_least, option, parse_hw, positive, usable_threads

RECOVERY = ("none", "distill", "train")


@dataclass
class CompressConfig:
    """Everything one compression needs."""

    checkpoint: str = option("the model to compress: a fastdpt checkpoint or a preset with weights", required=True)
    out: str = option("output folder (model.safetensors, report.json)", required=True)
    prune: str | None = option("structured pruning: PART=RATIO items of heads, mlp, decoder (fraction removed), "
                               "e.g. heads=0.5,mlp=0.3,decoder=0.25")
    importance: str = option("how channels and heads are ranked: magnitude, or taylor (needs --frames)", "magnitude")
    cluster: int | None = option("weight clustering: at most K shared values in each large weight tensor")
    qat: str | None = option("quantisation-aware training to a real int8 model (int8: NNCF -> OpenVINO, written as "
                             "OUT/model-int8.xml; needs --frames), compared with post-training int8 on the same "
                             "calibration frames")
    qat_steps: int = option("fine-tuning steps of the quantisation-aware model", 100)
    qat_lr: float = option("learning rate of the quantisation-aware fine-tuning (small: the weights start where the "
                                                "float model ended)", 1e-6)
    recover: str = option("recovery after pruning: none, distill (from the uncompressed model on --frames) or "
                          "train (on the labelled --data-root)", "none")
    frames: tuple = option("unlabelled frames (videos, image folders, KITTI raw roots) for distillation, taylor "
                           "importance and the agreement check", ())
    data_root: str | None = option("KITTI-format data root with ground truth for --recover train")
    steps: int = option("optimiser steps of the recovery", 300)
    batch_size: int = option("batch size of the recovery", 4)
    lr: float = option("AdamW learning rate of the recovery", 2e-4)
    max_frames: int = option("frames taken from --frames for distillation", 400)
    backend: str = option("runtime of the speed comparison (auto: the fastest this machine runs)", "auto")
    threads: int | None = option("torch threads (pruning, recovery, the speed comparison)")
    frame_size: str = option("frame size HxW of the speed comparison", "375x1242")
    bench_runs: int = option("timed steps of each model in the speed comparison (interleaved)", 5)
    compare: bool = option("time the models before and after, and quantise post-training beside --qat (off: only the "
                           "agreement; a study times its rows itself)", True, flags=("--compare/--no-compare",))
    overwrite: bool = option("replace what an earlier compression wrote in --out", False,
                             flags=("--overwrite/--no-overwrite",))
    seed: int = option("random seed", 0)
    progress: bool = option("show progress", True, flags=("--progress/--no-progress",))

    def __post_init__(self) -> None:
        if not self.checkpoint or not self.out:
            raise ConfigError("a compression needs a checkpoint and an output folder (--out)")
        self.frames = tuple(str(f) for f in (self.frames or ()))
        if self.recover not in RECOVERY:
            raise ConfigError(f"--recover must be one of {', '.join(RECOVERY)}, got {self.recover!r}")
        if not self.prune and self.cluster is None and self.qat is None:
            raise ConfigError("nothing to do: give --prune PART=RATIO,..., --cluster K and/or --qat int8")
        if self.qat not in (None, "int8"):
            raise ConfigError(f"--qat takes int8, got {self.qat!r}")
        if self.qat and not self.frames:
            raise ConfigError("--qat int8 fine-tunes on frames and calibrates on them: pass --frames")
        if self.recover != "none" and not self.prune:
            raise ConfigError("--recover fine-tunes a pruned model: give --prune as well")
        if self.recover == "distill" and not self.frames:
            raise ConfigError("--recover distill needs frames to distil on: pass --frames (videos, image folders)")
        if self.recover == "train" and not self.data_root:
            raise ConfigError("--recover train needs labelled data: pass --data-root")
        if self.importance == "taylor" and not self.frames:
            raise ConfigError("--importance taylor measures gradients on frames: pass --frames")
        at_least(self, "steps", "batch_size", "bench_runs", "max_frames", "qat_steps", "threads")
        self.threads = usable_threads(self.threads)
        positive(self, "lr", "qat_lr")
        self.frame_hw()

    def frame_hw(self) -> tuple[int, int]:
        return parse_hw(self.frame_size, minimum=32, what="--frame-size")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["frames"] = list(self.frames)
        return d


LEVEL_PARTS = "prune-R (heads, MLP and decoder at R), prune-heads0.5-mlp0.3 (per part), qat-int8, cluster-K"


def level_options(level: str) -> dict:
    """A study's ``compress:`` level as :class:`CompressConfig` options: ``none`` -> {}; parts joined by
    ``+``: ``prune-0.3`` (heads, MLP and decoder channels at 0.3), ``prune-heads0.5-mlp0.3`` (per part),
    ``qat-int8``, ``cluster-16``; e.g. ``prune-0.3+qat-int8``."""
    from .prune import PARTS

    text = str(level).strip()
    if text == "none":
        return {}
    opts: dict = {}
    for part in text.split("+"):
        kind, _, arg = part.strip().partition("-")
        if kind in opts:
            raise ConfigError(f"compress level {text!r} names {kind} twice")
        if kind == "prune" and arg:
            try:
                ratio = float(arg)
                opts["prune"] = ",".join(f"{p}={ratio:g}" for p in PARTS)
            except ValueError:
                items = []
                for item in arg.split("-"):
                    name = item.rstrip("0123456789.")
                    if name not in PARTS or name == item:
                        raise ConfigError(f"compress level {text!r}: {item!r} is not PARTratio "
                                          f"(PART one of {', '.join(PARTS)}); levels are {LEVEL_PARTS}") from None
                    items.append(f"{name}={item[len(name):]}")
                opts["prune"] = ",".join(items)
            from .prune import PruneSpec

            PruneSpec.parse(opts["prune"])  # ratios outside (0, 1) are refused here, when the grid is read
        elif kind == "qat" and arg == "int8":
            opts["qat"] = "int8"
        elif kind == "cluster" and arg.isdigit() and int(arg) >= 2:
            opts["cluster"] = int(arg)
        else:
            raise ConfigError(f"unknown compress level part {part!r} in {text!r}; levels are none or parts joined "
                              f"by +: {LEVEL_PARTS}")
    return opts
