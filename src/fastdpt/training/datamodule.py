"""The LightningDataModule: KITTI-format train/val splits, augmentation, loaders."""

from __future__ import annotations

import lightning as L
import torch

from ..data.augment import Augment
from ..data.kitti import DataPaths, KittiDepthDataset, collate, read_split


class KittiDataModule(L.LightningDataModule):
    """Training frames with augmentation, validation frames as they are (full size: the evaluation
    protocol applies the KB crop itself).

    Args:
        paths: where the frames, annotations and ``train_split`` / ``val_split`` lists are.
        augment: training augmentation (its ``kb_crop`` also applies to training frames).
        dense_root: train on dense depth maps from this folder instead of sparse annotations.
    """

    def __init__(self, paths: DataPaths, augment: Augment = Augment(), batch_size: int = 1, workers: int = 2,
                 dense_root: str | None = None) -> None:
        super().__init__()
        self.paths, self.augment, self.batch_size, self.workers = paths, augment, batch_size, workers
        self.dense_root = dense_root
        self.train_ds = self.val_ds = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is None:
            p = self.paths
            self.train_ds = KittiDepthDataset(read_split(p.splits["train_split"]), p.raw_root, p.gt_root,
                                              augment=self.augment, train=True, dense_root=self.dense_root)
            self.val_ds = KittiDepthDataset(read_split(p.splits["val_split"]), p.raw_root, p.gt_root,
                                            augment=Augment.none(kb_crop=False))

    def _loader(self, ds, shuffle: bool, batch_size: int):
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.workers,
                                           pin_memory=torch.cuda.is_available(), collate_fn=collate,
                                           persistent_workers=self.workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_ds, True, self.batch_size)

    def val_dataloader(self):
        return self._loader(self.val_ds, False, 1)
