"""Inference backends, ONNX export and int8 quantisation.

A backend maps normalised network input (B, 3, h, w) to the model's output (B, h, w) on the
predictor's device. Every backend keeps one cache of runners keyed by input shape (a compiled
graph, an ONNX Runtime session), built on first use and reused after.
"""

from .backends import (BACKENDS, PRECISIONS, Backend, CudaGraphBackend, OrtBackend, TorchBackend, cast_for_inference,
                       make_backend)
from .export import compare, export_onnx, onnx_config
from .quantize import quantize_int8

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "CudaGraphBackend", "OrtBackend", "TorchBackend", "cast_for_inference", "compare", "export_onnx",
           "make_backend", "onnx_config", "quantize_int8"]
