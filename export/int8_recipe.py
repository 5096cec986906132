"""The int8 calibration recipe and quality gate: a leaf both the quantizer and the runner read (its hash keys the
cache, so the runner finds what `instyle quantize` built without importing nncf)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

GATE_DB = 40.0  # int8 is picked by `auto` only where every held-out photo of every style is this close to fp32
EVEN_MIX = "even mix"  # the gate's extra row for a multi-style model (every style at once): not a style of it
CHECK_SIDE = 1024  # held-out photos are scaled to this longest side: int8 lost ~1-3 dB from 512 to 1024 px


@dataclass(frozen=True)
class Recipe:
    """How the calibration set is drawn and how NNCF quantizes."""
    crops: int = 128
    side: int = 512                    # 256-px crops set ranges that clipped at 1024 px (mosaic 34.7 vs 38.0 dB)
    seed: int = 0
    preset: str = "mixed"              # nncf.QuantizationPreset: asymmetric activations (ReLU/IN outputs)
    fast_bias_correction: bool = True
    float_norms: bool = True           # instance norms (and the residual adds) stay float: only convs are int8
    float_head: int = 3                # the first convs in float: the RGB conv and the two downsampling convs, where
    #                                    int8 cost the most PSNR at 1024 px (the slim zoo: candy 39.9 -> 42.0 dB for
    #                                    5 % of its multiply-adds; bench/results/*-int8-per-style/NOTE.md)
    ignore_last_conv: bool = False     # the conv that writes the picture: float would trade time for accuracy

    # InstanceNorm2d as OpenVINO holds it (MVN, or its decomposition) and the elementwise ops around it: NNCF
    # quantizes these inputs by default, and rounding a layer's statistics to int8 shifts every pixel of it
    # (MatMul: a multi-style model's style_weights @ per-style (gamma, beta), which int8 would round per style).
    # The gate (GATE_DB) decides whether a recipe ships; docs/int8.md has its committed reports.
    NORM_OPS = ("MVN", "ReduceMean", "Subtract", "Multiply", "Sqrt", "Divide", "Add", "MatMul")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]
