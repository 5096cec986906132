"""What a training run leaves for people to look at: CSV loss log, loss plot, sample grids (rank 0 only)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from instyle.atomic import atomic_path

FIELDS = ("step", "content", "style", "tv", "lattice", "distill", "total", "images_per_s", "elapsed_s")


class LossLog:
    """Rows of FIELDS in memory, rewritten atomically as CSV (and a plot) on `flush`."""

    def __init__(self, csv_path: Path, plot_path: Path, rows: list[dict] | None = None,
                 extra_fields: tuple[str, ...] = ()):
        """extra_fields: more columns after FIELDS (e.g. one weighted style loss per style)."""
        self.csv_path, self.plot_path = Path(csv_path), Path(plot_path)
        self.rows: list[dict] = list(rows or [])
        self.fields = FIELDS + tuple(extra_fields)

    @classmethod
    def resume(cls, csv_path: Path, plot_path: Path, step: int, extra_fields: tuple[str, ...] = ()) -> "LossLog":
        """Reopen a log, dropping rows past `step` (written after the checkpoint being resumed)."""
        fields = FIELDS + tuple(extra_fields)
        rows = []
        if Path(csv_path).is_file():
            with open(csv_path, newline="") as f:
                rows = [{k: float(v) for k, v in r.items() if k in fields and v != ""} for r in csv.DictReader(f)]
            rows = [r for r in rows if r.get("step", 0) <= step]
        return cls(csv_path, plot_path, rows, extra_fields)

    def _format(self, r: dict) -> dict:
        return {k: (int(v) if k == "step" else f"{v:.6g}") for k, v in r.items() if k in self.fields}

    def add(self, write: bool = True, **row) -> None:
        """Keep `row`; with `write`, also append it to the CSV at once (progress visible mid-run)."""
        self.rows.append(row)
        if write and self.csv_path.is_file():
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(self._format(row))

    def flush(self, plot: bool = True) -> None:
        """Rewrite the whole CSV atomically (and the plot): at start, on resume and at checkpoints."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        writer.writeheader()
        for r in self.rows:
            writer.writerow(self._format(r))
        with atomic_path(self.csv_path) as tmp:
            tmp.write_text(buf.getvalue())
        if plot and self.rows:
            self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4), dpi=100)
        ax = fig.subplots()
        steps = [r["step"] for r in self.rows]
        for key in ("total", "content", "style", "tv", "lattice", "distill"):
            values = [r.get(key, 0.0) for r in self.rows]
            if any(v > 0 for v in values):
                ax.plot(steps, values, label=key, linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("weighted loss")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.plot_path) as tmp:
            fig.savefig(tmp, format="png")


def sample_grid(inputs: torch.Tensor | None, *outputs: torch.Tensor) -> torch.Tensor:
    """Inputs (top row, if given) over one row per outputs batch (e.g. one per style): N,3,H,W 0..255 ->
    3, rows*H, N*W, with 2 px white gaps."""
    rows = [t for t in (inputs, *outputs) if t is not None]
    outputs = outputs[0]
    n, _, h, w = outputs.shape
    gap = 2
    grid = torch.full((3, len(rows) * (h + gap) - gap, n * (w + gap) - gap), 255.0)
    for r, batch in enumerate(rows):
        for i in range(n):
            grid[:, r * (h + gap):r * (h + gap) + h, i * (w + gap):i * (w + gap) + w] = \
                batch[i].detach().float().cpu().clamp(0, 255)
    return grid
