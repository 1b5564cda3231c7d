"""Inference backends (one registry), runtime options and the ``auto`` choice, ONNX / OpenVINO export
and int8 quantisation.

A backend maps normalised network input (B, 3, h, w) to the model's output (B, h, w) on the
predictor's device. Every backend keeps one cache of runners keyed by input shape (a compiled
graph, an ONNX Runtime session, an OpenVINO compiled model), built on first use and reused after.
"""

from .backends import (PRECISIONS, REGISTRY, Backend, CompileBackend, CudaGraphBackend, OrtBackend, TorchBackend,
                       available_backends, cast_for_inference, make_backend, register)
from .cpu import Choice, choose, cpu_flags, matrix_features, native_bf16, native_int8
from .export import compare, export_onnx, onnx_config
from .openvino import OpenVinoBackend, ir_config, save_ir
from .options import AUTO, RuntimeOptions, backend_names, best_precision
from .quantize import quantize_int8

BACKENDS = tuple(REGISTRY)  # every registered backend (after the imports above registered them)

__all__ = ["AUTO", "BACKENDS", "PRECISIONS", "REGISTRY", "Backend", "Choice", "CompileBackend", "CudaGraphBackend",
           "OpenVinoBackend", "OrtBackend", "RuntimeOptions", "TorchBackend", "available_backends", "backend_names",
           "best_precision", "cast_for_inference", "choose", "compare", "cpu_flags", "export_onnx", "ir_config",
           "make_backend", "matrix_features", "native_bf16", "native_int8", "onnx_config", "quantize_int8", "register",
           "save_ir"]
