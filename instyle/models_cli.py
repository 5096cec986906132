"""`instyle models`: the shipped styles (first = default) with a one-line description each."""
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
    if "description" in training:
        parts.insert(0, training["description"])
    return ", ".join(parts)


def run(args) -> int:
    from instyle.checkpoint import read_metadata, shipped

    zoo = shipped()
    rows = [(name, path, read_metadata(path)) for name, path in zoo.items()]
    if args.json:
        print(json.dumps([{"name": n, "path": str(p), "metadata": m} for n, p, m in rows], indent=2))
        return 0
    if not rows:
        print("no shipped styles yet; use --model PATH with a .safetensors or pytorch/examples .pth file")
        return 0
    width = max(len(n) for n, _, _ in rows)
    for i, (name, _, meta) in enumerate(rows):
        default = " (default)" if i == 0 else ""
        print(f"{name:<{width}}  {describe(meta)}{default}")
    return 0
