"""Benchmark outputs: results.json (the record), results.csv and results.md (the same rows), latency.png,
and the ratio table of `instyle bench --compare A.json B.json`."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from instyle.atomic import atomic_path

from .harness import ROW_KEYS

MD_COLUMNS = [  # (row key, header, format)
    ("backend", "backend", "{}"), ("precision", "precision", "{}"), ("batch", "batch", "{}"),
    ("size", "H×W", "{}"), ("median_ms", "median ms", "{:.2f}"), ("p10_ms", "p10 ms", "{:.2f}"),
    ("p90_ms", "p90 ms", "{:.2f}"), ("images_per_s", "img/s", "{:.1f}"), ("mpx_per_s", "Mpx/s", "{:.2f}"),
    ("peak_mem_mb", "peak mem MB", "{:.0f}"), ("tflops", "TFLOP/s", "{:.3f}"), ("pct_peak", "% peak", "{:.1f}"),
    ("bound_ms", "bound ms", "{:.3f}"), ("setup_s", "setup s", "{:.2f}"), ("first_call_s", "first call s", "{:.2f}"),
    ("warmup_s", "warm-up s", "{:.2f}"), ("psnr_vs_eager_db", "PSNR vs eager dB", "{:.1f}"),
]


def write_json(result: dict, path: Path) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    return path


def write_csv(rows: list[dict], path: Path) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_KEYS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in ROW_KEYS})
    return path


def _cell(row: dict, key: str, fmt: str) -> str:
    if key == "size":
        return f"{row['height']}×{row['width']}"
    value = row.get(key)
    return "–" if value is None else fmt.format(value)


def markdown(result: dict) -> str:
    dev, model = result["device"], result["model"]
    kind = f"CPU, {dev.get('logical_cpus')} logical CPUs" if dev["kind"] == "cpu" else "GPU"
    if dev.get("isa") is not None:
        kind += "; " + (" ".join(dev["isa"]) or "no AVX2") + ("" if "amx_bf16" in dev["isa"] else "; no AMX")
    lines = [
        f"# instyle bench: {dev['name']} ({kind})",
        "",
        f"{result['date']} · git {result.get('git_rev') or '?'} · model {model['name']} ({model['arch']}, "
        f"{model['params'] / 1e6:.2f} M params, {model['conv_flops_per_px'] / 1e6:.3f} MFLOP/px in convs)"
        + (f" · {model['note']}" if model.get("note") else ""),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v),
        "",
        f"Timed calls per row: {result['matrix']['iters']} (after {result['matrix']['warmup']} warm-up); torch "
        f"threads {result['matrix']['torch_threads']}; input {result['matrix'].get('input', 'uniform noise')}; "
        f"1-min load average start/end "
        f"{(result['matrix'].get('load_avg_1m') or {}).get('start')}/"
        f"{(result['matrix'].get('load_avg_1m') or {}).get('end')}."
        + "".join(f" Options of {b}: " + ", ".join(f"{k}={v}" for k, v in o.items()) + "."
                  for b, o in (result["matrix"].get("options") or {}).items()),
        "",
        f"Peak: {json.dumps(dev['peak_tflops']) + ' TFLOP/s' if dev['peak_tflops'] else 'unknown'}"
        f"{', %s GB/s' % dev['peak_gbps'] if dev['peak_gbps'] else ''}. " + result["notes"]["timing"],
        "",
        *(["**Interrupted (Ctrl-C): rows marked `interrupted` were not measured.**", ""]
          if result.get("interrupted") else []),
        "| " + " | ".join(h for _, h, _ in MD_COLUMNS) + " |",
        "|" + "|".join("---" if k in ("backend", "precision", "size") else "---:" for k, _, _ in MD_COLUMNS) + "|",
    ]
    for row in result["rows"]:
        if row.get("skipped"):
            head = [_cell(row, k, f) for k, _, f in MD_COLUMNS[:4]]
            reason = str(row["skipped"]).replace("|", "\\|")
            rest = [f"not measured: {reason}"] + [""] * (len(MD_COLUMNS) - 5)
            lines.append("| " + " | ".join(head + rest) + " |")
        else:
            lines.append("| " + " | ".join(_cell(row, k, f) for k, _, f in MD_COLUMNS) + " |")
    lines += ["", "Notes:"] + [f"- {k}: {v}" for k, v in result["notes"].items() if k != "timing"]
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path: Path) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(markdown(result))
    return path


def plot(result: dict, path: Path) -> Path:
    """Latency vs megapixels (log-log), one line per backend x precision (x batch), bound dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if not r.get("skipped")]
    batches = sorted({r["batch"] for r in result["rows"]})
    fig, ax = plt.subplots(figsize=(7, 5))
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault((r["backend"], r["precision"], r["batch"]), []).append(r)
    bounds: dict[tuple, list[tuple[float, float]]] = {}
    for (backend, precision, batch), rs in sorted(series.items()):
        rs.sort(key=lambda r: r["height"] * r["width"])
        mpx = [r["batch"] * r["height"] * r["width"] / 1e6 for r in rs]
        label = f"{backend} {precision}" + (f" b{batch}" if len(batches) > 1 else "")
        ax.plot(mpx, [r["median_ms"] for r in rs], marker="o", label=label)
        for m, r in zip(mpx, rs):
            if r.get("bound_ms"):
                bounds.setdefault((precision, batch), []).append((m, r["bound_ms"]))
    for (precision, batch), pts in sorted(bounds.items()):
        pts = sorted(set(pts))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", linewidth=1, alpha=0.6,
                label=f"lower bound {precision}" + (f" b{batch}" if len(batches) > 1 else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("megapixels per call (batch × H × W)")
    ax.set_ylabel("median latency per call (ms)")
    dev = result["device"]
    kind = f"CPU, {dev.get('logical_cpus')} logical CPUs" if dev["kind"] == "cpu" else "GPU"
    ax.set_title(f"instyle {result['model']['name']} on {result['device']['name']} ({kind})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no configuration measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def write_all(result: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "json": write_json(result, out_dir / "results.json"),
        "csv": write_csv(result["rows"], out_dir / "results.csv"),
        "md": write_markdown(result, out_dir / "results.md"),
        "png": plot(result, out_dir / "latency.png"),
    }


def load(path: str | Path) -> dict:
    """A results.json (or the folder holding one); ValueError when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read benchmark results ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path}: not an instyle bench results.json (no rows)")
    return data


def _key(row: dict) -> tuple:
    return row["backend"], row["precision"], row["batch"], row["height"], row["width"]


def compare(a: dict, b: dict) -> str:
    """Rows matched by backend/precision/batch/size; speedup = A median / B median (> 1: B is faster)."""
    rows_a = {_key(r): r for r in a["rows"]}
    rows_b = {_key(r): r for r in b["rows"]}
    keys = list(rows_a) + [k for k in rows_b if k not in rows_a]
    head = ("backend", "precision", "batch", "H×W", "A ms", "B ms", "B vs A")
    table = []
    ratios = []
    for k in keys:
        ra, rb = rows_a.get(k), rows_b.get(k)
        ma = ra.get("median_ms") if ra and not ra.get("skipped") else None
        mb = rb.get("median_ms") if rb and not rb.get("skipped") else None
        if ma and mb:
            ratio = ma / mb
            ratios.append(ratio)
            verdict = f"{ratio:.2f}x " + ("faster" if ratio >= 1 else "slower")
        else:
            verdict = "only in A" if rb is None else "only in B" if ra is None else "not comparable (skipped)"
        table.append((k[0], k[1], str(k[2]), f"{k[3]}×{k[4]}", "–" if ma is None else f"{ma:.2f}",
                      "–" if mb is None else f"{mb:.2f}", verdict))
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w if i < 4 else "{:>%d}" % w for i, w in enumerate(widths))
    lines = [f"A: {a['device']['name']} {a.get('date', '')} git {a.get('git_rev')}",
             f"B: {b['device']['name']} {b.get('date', '')} git {b.get('git_rev')}",
             fmt.format(*head)] + [fmt.format(*r) for r in table]
    if ratios:
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        lines.append(f"geometric mean over {len(ratios)} matched rows: B is {geo:.2f}x the speed of A")
    else:
        lines.append("no rows measured in both A and B")
    return "\n".join(lines)
