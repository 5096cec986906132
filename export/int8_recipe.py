"""The int8 calibration recipe and quality gate: a leaf both the quantizer and the runner read (its hash keys the
cache, so the runner finds what `instyle quantize` built without importing nncf)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

GATE_DB = 40.0  # int8 is picked by `auto` only where every held-out photo of every style is this close to fp32


@dataclass(frozen=True)
class Recipe:
    """How the calibration set is drawn and how NNCF quantizes."""
    crops: int = 300
    side: int = 256
    seed: int = 0
    preset: str = "mixed"              # nncf.QuantizationPreset: asymmetric activations (ReLU/IN outputs)
    fast_bias_correction: bool = True
    ignore_last_conv: bool = False     # the last conv kept in float (see the README's int8 section)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]
