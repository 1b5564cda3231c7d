"""Datasets: KITTI conventions and files (kitti), training augmentation (augment), and synthetic
KITTI-format driving scenes (synthetic)."""
