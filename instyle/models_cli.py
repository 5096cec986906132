"""`instyle models`: the shipped styles (first = default), styles inside multi-style files included."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def describe(meta: dict[str, str]) -> str:
    config = json.loads(meta.get("config") or "{}")
    training = json.loads(meta.get("training") or "{}")
    parts = [meta.get("arch", "?")]
    parts += [f"{k}={config[k]}" for k in ("norm", "padding") if k in config]
    if "iterations" in training:
        parts.append(f"{training['iterations']} iterations")
    if meta.get("styles"):
        parts.append(f"one of {len(json.loads(meta['styles']))} styles in the file")
    if "description" in training:
        parts.insert(0, training["description"])
    return ", ".join(parts)


def run(args) -> int:
    from instyle.checkpoint import read_metadata, shipped_styles, style_entries

    styles = shipped_styles()
    rows = []
    for name, (path, index) in styles.items():
        meta = read_metadata(path)
        source = style_entries(meta)[index]["source"]
        rows.append((name, path, index, source, meta))
    if args.json:
        print(json.dumps([{"name": n, "path": str(p), "index": i, "source": src, "default": k == 0,
                           "metadata": m} for k, (n, p, i, src, m) in enumerate(rows)], indent=2))
        return 0
    if not rows:
        print("no shipped styles; use --model PATH with a .safetensors or pytorch/examples .pth file")
        return 0
    width = max(len(r[0]) for r in rows)
    for k, (name, path, index, source, meta) in enumerate(rows):
        where = f"{path.name}[{index}]" if meta.get("styles") else path.name
        default = " (default)" if k == 0 else ""
        print(f"{name:<{width}}  {where}: {describe(meta)}{default}")
    networks()
    return 0


def networks() -> None:
    """Where the shipped zoo has a slim twin: both networks by name (--model NAME), and which one `auto` runs here."""
    from instyle.checkpoint import FULL_ZOO, SLIM_ZOO, read_metadata, shipped, slim_twin
    from instyle.cpu import has_amx

    zoo = shipped()
    if FULL_ZOO not in zoo or slim_twin(zoo[FULL_ZOO]) is None:
        return
    here = FULL_ZOO if has_amx() else SLIM_ZOO
    print("\nnetworks holding these styles (--model NAME; on a CPU `auto` runs the slim one unless it has AMX):")
    for stem in (FULL_ZOO, SLIM_ZOO):
        config = json.loads(read_metadata(zoo[stem]).get("config") or "{}")
        mark = " (runs here by default on the CPU)" if stem == here else ""
        print(f"  {stem:<7} johnson width {config.get('width', 32)}, {config.get('blocks', 5)} residual blocks{mark}")
