"""int8 per style: a multi-style network's int8 form for the styles whose gate passed, its float form for the rest.

A multi-style network is quantized once for all its styles and gated per style (export/ov_quant.py `gate`). One
style can fail where the others pass -- mosaic, the highest-contrast style, is 37.2 dB on the night photo in both
shipped zoos while the other ten are 40.6-46.1 dB. Rather than losing int8 for every style, `auto` runs each row
of a batch in the network its style passed in: int8 when every style of the row's mix passed, else the float
precision (bf16 where the CPU has it, else fp32). Both networks take `style_weights` as an input, so a switch
never rebuilds; each is compiled on first use (`prepare`), from the disk cache after the first process.

An explicit `--precision int8` keeps running every style in int8 (with the gate's note): asking is choosing.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .int8_recipe import EVEN_MIX


def gate_verdicts(gate: dict | None, count: int) -> list[tuple[str, bool, float]] | None:
    """(name, passed, min PSNR) per style of a `count`-style network from its int8 gate report, in the network's
    style order (the report lists them so); None when the report has no per-style rows for `count` styles."""
    rows = [(name, bool(r.get("passed")), float(r.get("min_psnr_db", 0.0)))
            for name, r in (gate or {}).get("styles", {}).items() if name != EVEN_MIX]
    return rows if count > 1 and len(rows) == count else None


def worth_splitting(gate: dict | None, count: int) -> bool:
    """Whether a per-style runner helps: some styles passed, some failed."""
    verdicts = gate_verdicts(gate, count)
    return verdicts is not None and len({ok for _, ok, _ in verdicts}) == 2


class PerStyleRunner:
    """run(x, style_weights): rows whose styles all passed the int8 gate run the int8 network, the others the float
    one. `build_int8` / `build_float` return OpenVINORunners (compiled on first need)."""

    def __init__(self, build_int8: Callable, build_float: Callable, float_precision: str,
                 verdicts: list[tuple[str, bool, float]], gate_db: float, notes: list[str]):
        self._build = {"int8": build_int8, float_precision: build_float}
        self._runners: dict = {}
        self.float_precision = float_precision
        self.verdicts = verdicts
        self.passed = torch.tensor([ok for _, ok, _ in verdicts])
        self.gate_db = gate_db
        self.notes = notes  # the builds' notes (cache) are added as they happen

    def int8_rows(self, style_weights: torch.Tensor) -> torch.Tensor:
        """Per row of N x S weights: True where every style with a positive weight passed."""
        return ~((style_weights.cpu() > 0) & ~self.passed).any(1)

    def precision_for(self, style_weights: torch.Tensor) -> str:
        """The precision one row (S) or every row (N x S) runs in: int8, the float precision, or both joined."""
        return "+".join(self._kinds(style_weights))

    def note_for(self, style_weights: torch.Tensor) -> str | None:
        """Why the row(s) run the float network, naming the failed styles; None when all run int8."""
        used = (style_weights.reshape(-1, len(self.verdicts)).cpu() > 0).any(0)
        failed = [f"{name} {db:.1f} dB" for (name, ok, db), u in zip(self.verdicts, used.tolist()) if u and not ok]
        if not failed:
            return None
        return (f"int8 failed its {self.gate_db:g} dB quality gate for {', '.join(failed)}: "
                f"{'that style runs' if len(failed) == 1 else 'those styles run'} {self.float_precision}")

    def prepare(self, style_weights: torch.Tensor | None = None) -> None:
        """Compile the network(s) the rows need now (None: both), so no request waits for a build."""
        for kind in list(self._build) if style_weights is None else self._kinds(style_weights):
            self._runner(kind)

    def _kinds(self, style_weights: torch.Tensor) -> list[str]:
        """The networks one row (S) or the rows (N x S) run in: int8 and/or the float precision."""
        rows = self.int8_rows(style_weights.reshape(-1, len(self.verdicts)))
        return (["int8"] if rows.any() else []) + ([self.float_precision] if not rows.all() else [])

    def _runner(self, kind: str):
        if kind not in self._runners:
            runner = self._build[kind]()
            self.notes += [n for n in runner.notes if n not in self.notes]
            self._runners[kind] = runner
        return self._runners[kind]

    def __call__(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        rows = self.int8_rows(style_weights)
        if rows.all() or not rows.any():
            kind = "int8" if rows.all() else self.float_precision
            y = self._runner(kind)(x, style_weights)
            self._same_shapes(kind, x, style_weights)
            return y
        out = None
        for kind, pick in (("int8", rows), (self.float_precision, ~rows)):
            idx = pick.nonzero().flatten()
            y = self._runner(kind)(x[idx], style_weights[idx])
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[idx] = y
        return out

    def _same_shapes(self, ran: str, x: torch.Tensor, style_weights: torch.Tensor) -> None:
        """Once both networks are built (a warm server), a shape one of them compiles is compiled for the other
        too, now: a request switching to a style of the other network at a size already seen compiles nothing."""
        other = next(k for k in self._build if k != ran)
        if other in self._runners:
            runner = self._runners[other]
            runner.request({k: v.shape for k, v in runner.inputs(x, style_weights).items()})
