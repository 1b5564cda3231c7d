"""The LightningDataModule: KITTI-format train/val splits, augmentation, loaders."""

from __future__ import annotations

import lightning as L
import torch

from ..data.augment import Augment
from ..data.kitti import DataPaths, KittiDepthDataset, collate, read_split


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from ``seed + epoch`` (so any epoch's order can be made again),
    starting at ``start`` samples in: the rest of an interrupted epoch, nothing repeated or skipped."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self.order(self.epoch)[start:])

    def __len__(self) -> int:
        return self.size


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader whose position in the epoch is part of the resume state (Lightning saves
    ``state_dict()`` in ``resume.ckpt`` and calls ``load_state_dict`` before iterating again).

    ``batches_done`` is set by the run's checkpoint callback from the batch index the training loop
    reached, not counted while fetching (Lightning fetches a batch ahead)."""

    def __init__(self, dataset, batch_size: int, seed: int, **kwargs) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed), **kwargs)
        self.batches_done = 0

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "samples": self.batches_done * self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch = int(state["epoch"])
        self.sampler.start = int(state["samples"])
        self.batches_done = self.sampler.start // self.batch_size


class KittiDataModule(L.LightningDataModule):
    """Training frames with augmentation, validation frames as they are (full size: the evaluation
    protocol applies the KB crop itself).

    Args:
        paths: where the frames, annotations and ``train_split`` / ``val_split`` lists are.
        augment: training augmentation (its ``kb_crop`` also applies to training frames).
        dense_root: train on dense depth maps from this folder instead of sparse annotations.
        exact_split: a split list of training frames whose depth is ground truth among pseudo-labels
            (their items say ``exact``, and the loss's trimming spares them).
    """

    def __init__(self, paths: DataPaths, augment: Augment = Augment(), batch_size: int = 1, workers: int = 2,
                 dense_root: str | None = None, seed: int = 0, exact_split: str | None = None) -> None:
        super().__init__()
        self.paths, self.augment, self.batch_size, self.workers = paths, augment, batch_size, workers
        self.dense_root, self.seed, self.exact_split = dense_root, seed, exact_split
        self.train_ds = self.val_ds = None
        self.train_loader: ResumableLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is None:
            p = self.paths
            exact = {e.rgb for e in read_split(self.exact_split)} if self.exact_split else ()
            self.train_ds = KittiDepthDataset(read_split(p.splits["train_split"]), p.raw_root, p.gt_root,
                                              augment=self.augment, train=True, dense_root=self.dense_root,
                                              exact=exact)
            self.val_ds = KittiDepthDataset(read_split(p.splits["val_split"]), p.raw_root, p.gt_root,
                                            augment=Augment.none(kb_crop=False))

    def _options(self) -> dict:
        return dict(num_workers=self.workers, pin_memory=torch.cuda.is_available(), collate_fn=collate,
                    persistent_workers=self.workers > 0)

    def train_dataloader(self):
        """Shuffled by epoch (seeded), resumable mid-epoch."""
        self.train_loader = ResumableLoader(self.train_ds, self.batch_size, self.seed, **self._options())
        return self.train_loader

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val_ds, batch_size=1, shuffle=False, **self._options())
