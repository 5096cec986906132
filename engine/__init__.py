"""Inference engine: backends, precision, shape handling (and, with the kernels, fused and tiled runs)."""
from .backends import BACKENDS, BackendUnavailable
from .stylizer import PRECISIONS, Stylizer, load

__all__ = ["BACKENDS", "PRECISIONS", "BackendUnavailable", "Stylizer", "load"]
