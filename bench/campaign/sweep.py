"""`campaign --stage verify`, step `sweep`: per conv layer of the 4K fp16 fused chain, its pinned tile and a few
candidates timed, the winners written as a tile table (kernels/tile_table.py).

Layers: the chain with its default modes and with conv3x3=tma (the TMA conv's tile too); layers that share a table
key (the ten residual convs: one key) are timed once, on the first layer with that key. Each candidate runs through
tile_table.override on the layer's whole launch sequence as the chain runs it (modes._recorded_calls: normalize
pass, conv launch(es), statistics finalize) on the input the chain hands it. GPU: triton.testing.do_bench medians;
a candidate that does not compile (shared memory) is a row with its error. Dry run (CPU, interpreter, tiny size):
the pinned tile and one candidate per layer, one wall-clock call each, only to exercise the path.

Writes <stage>/sweep.json (every row) and <stage>/tiles.json, the table format of kernels/tiles.json: after a
loan, copying it there makes the engine run the winners (the pinned rules keep every layer it does not list).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import triton

MODES = ({}, {"conv3x3": "tma"})
MAX_CANDIDATES = 5  # besides the pinned tile: ~1.5 s of compile each on the GPU machine
# conv_tma: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); BLOCK_N is capped at the layer's channels
TMA_CANDIDATES = [(128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                  (256, 128, 64, 8, 3), (128, 128, 64, 4, 4)]


def candidates(key: str, pinned: dict, limit: int) -> list[triton.Config]:
    """Up to `limit` tiles other than the pinned one for layer `key`: conv_in's autotune configs pruned to the
    layer's channels (conv_in_gemm._prune), or TMA_CANDIDATES."""
    from instyle.kernels import conv_in_gemm as CI
    from instyle.kernels import tile_table

    cout = int(key.split(">")[1].split()[0])
    if key.startswith("conv_tma"):
        cap = max(16, triton.next_power_of_2(cout))
        configs = [triton.Config(dict(BLOCK_M=m, BLOCK_N=min(n, cap), BLOCK_K=k), num_warps=w, num_stages=s)
                   for m, n, k, w, s in TMA_CANDIDATES]
    else:
        cin = int(key.split(">")[0].split()[-1])
        pix = int(key.split("pix")[1].split()[0]) if " pix" in key else 1
        flat = " flat " in key
        configs = CI._prune(CI._GPU_CONFIGS, {"Cout": cout, "Cin": cin}, PIX=pix, FLAT_K=flat)
    seen, out = {json.dumps(pinned, sort_keys=True)}, []
    for cfg in configs:
        tile = json.dumps(tile_table.as_tile(cfg), sort_keys=True)
        if tile not in seen:
            seen.add(tile)
            out.append(cfg)
    return out[:limit]


def _layer_keys(call) -> list[tuple[str, dict]]:
    """(key, pinned tile) of every pick the layer's launches make (one run of it)."""
    from instyle.kernels import tile_table

    with tile_table.recording() as picks:
        call()
    return list(dict(picks).items())


@torch.no_grad()
def sweep(out: Path, dry: bool, model: torch.nn.Module, x: torch.Tensor, name: str = "given") -> dict:
    from instyle.engine.backends import fused_gemm as FC
    from instyle.kernels import tile_table

    from .modes import _median_ms, _recorded_calls
    from .verify import _device

    model = model.to(x.device).eval()
    rows, best, done = [], {}, set()
    for mode in MODES:
        chain = FC.FusedChain(model, torch.float16, **mode)
        for layer, call in _recorded_calls(chain, x).items():
            for key, pinned in _layer_keys(call):
                if key in done:
                    continue
                done.add(key)
                tiles = [("pinned", triton.Config({k: pinned[k] for k in tile_table.FIELDS},
                                                  num_warps=pinned["num_warps"], num_stages=pinned["num_stages"]))]
                tiles += [("candidate", c) for c in candidates(key, pinned, 1 if dry else MAX_CANDIDATES)]
                for role, cfg in tiles:
                    row = {"key": key, "layer": layer, "mode": mode or "default", "role": role,
                           "tile": tile_table.as_tile(cfg)}
                    try:
                        with tile_table.override(key, cfg):
                            if not dry:
                                call()  # compile outside the timing
                            row["median_ms"] = round(_median_ms(call, dry), 4)
                    except Exception as e:  # noqa: BLE001 -- a tile that does not fit is a result, not the end
                        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    rows.append(row)
                    if "median_ms" in row and row["median_ms"] < best.get(key, {}).get("median_ms", float("inf")):
                        best[key] = row
        del chain
    device = _device()
    arch = tile_table.device_arch(device.index or 0) if device.type == "cuda" else tile_table.CENSUS_ARCH
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run: not a measurement)"
    table = {"arch": arch, "source": f"campaign sweep, {time.strftime('%Y-%m-%d')}, {gpu}, "
                                      f"{x.shape[3]}x{x.shape[2]} fp16, model {name}",
             "tiles": {k: r["tile"] for k, r in sorted(best.items())}}
    (out / "tiles.json").write_text(json.dumps(table, indent=1) + "\n")
    speedups = {k: round(next(r["median_ms"] for r in rows if r["key"] == k and r["role"] == "pinned")
                         / r["median_ms"], 3) for k, r in best.items()
                if any(p["key"] == k and p["role"] == "pinned" and "median_ms" in p for p in rows)}
    result = {"size": [int(x.shape[3]), int(x.shape[2])], "precision": "fp16", "device": str(x.device), "gpu": gpu,
              "timer": "wall, one call (dry run)" if dry else "triton.testing.do_bench median", "model": name,
              "rows": rows, "winners": table["tiles"], "pinned_over_winner": speedups}
    (out / "sweep.json").write_text(json.dumps(result, indent=2))
    return result
