"""Datasets: KITTI on disk and synthetic KITTI-format scenes."""
