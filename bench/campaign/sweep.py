"""`campaign --stage verify`, step `sweep`: per conv layer of the 4K fp16 fused chain, the rules' tile (and the
committed table's, where it differs) and a few candidates timed, the winners written as a tile table
(kernels/tile_table.py).

Layers: the chain with its default modes and with conv3x3=tma (the TMA conv's tile too), the residual blocks first
(most of the time); a table key names the shape class, K order and prologue, so the ten residual convs are three
keys (conv1 of block 1, conv1 of the others, every conv2), each timed on the first layer with it. Each tile runs
through tile_table.override on the layer's whole launch sequence as the chain runs it (modes._recorded_calls:
normalize pass, conv launch(es), statistics finalize) on the input the chain hands it, captured in a CUDA graph
(do_bench_cudagraph medians, as the Stylizer replays it). A tile that does not compile (shared memory) is a row
with its error. Dry run (CPU, interpreter, tiny size): the rules' tile and one candidate per key, one wall-clock
call each, only to exercise the path; its table's arch is "dry-run", which no GPU matches.

Writes <stage>/sweep.json (every row) and <stage>/tiles.json, the table format of kernels/tiles.json, both after
every key (a step stopped at its limit keeps what it measured); keys reached after the time budget are listed as
unswept. After a loan, copying tiles.json to kernels/tiles.json makes the engine run the winners (the rules keep
every layer it does not list).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import triton

MODES = ({}, {"conv3x3": "tma"})
MAX_CANDIDATES = 4  # besides the rules' (and the table's) tile: ~1.5 s of compile each on the GPU machine
# conv_tma: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); BLOCK_N is capped at the layer's channels
TMA_CANDIDATES = [(128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                  (256, 128, 64, 8, 3), (128, 128, 64, 4, 4)]


def candidates(key: str, known: list[dict], limit: int) -> list[triton.Config]:
    """Up to `limit` tiles other than the `known` ones for layer `key`: conv_in's autotune configs pruned to the
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
        configs = [c for c in configs if c.kwargs["BLOCK_M"] % CI.GPU_STAT_M == 0]  # stat tiles divide BLOCK_M
    seen, out = {json.dumps(t, sort_keys=True) for t in known}, []
    for cfg in configs:
        tile = json.dumps(tile_table.as_tile(cfg), sort_keys=True)
        if tile not in seen:
            seen.add(tile)
            out.append(cfg)
    return out[:limit]


def _layer_keys(call) -> list[tuple[str, dict, dict]]:
    """(key, tile picked, the rules' tile) of every pick the layer's launches make (one run of it)."""
    from instyle.kernels import tile_table

    with tile_table.recording() as picks:
        call()
    return list({key: (key, tile, rule) for key, tile, rule in picks}.values())


def _config(tile: dict) -> triton.Config:
    from instyle.kernels import tile_table

    return triton.Config({k: tile[k] for k in tile_table.FIELDS}, num_warps=tile["num_warps"],
                         num_stages=tile["num_stages"])


def _layers_in_order(chain, x) -> list[tuple[str, object]]:
    """The chain's layer calls, the residual blocks' first (most of the chain's time), then in chain order."""
    from .modes import _recorded_calls

    calls = list(_recorded_calls(chain, x).items())
    return sorted(calls, key=lambda item: not item[0].startswith("res"))


@torch.no_grad()
def sweep(out: Path, dry: bool, model: torch.nn.Module, x: torch.Tensor, name: str = "given",
          budget_s: float = 105) -> dict:
    """Times each layer key's tiles into out/sweep.json and the winners into out/tiles.json, both rewritten after
    every key (a step stopped at its limit keeps what it measured); no new key is started after budget_s."""
    from instyle.engine.backends import fused_gemm as FC
    from instyle.kernels import tile_table

    from .modes import _median_ms

    started = time.perf_counter()
    if dry:  # the interpreter's times say nothing about a GPU's budget: every key, to exercise the path
        budget_s = float("inf")
    model = model.to(x.device).eval()
    device = x.device
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run: not a measurement)"
    # a dry run's table must never apply on a GPU: its arch names no GPU
    arch = tile_table.device_arch(device) if device.type == "cuda" else "dry-run"
    result = {"size": [int(x.shape[3]), int(x.shape[2])], "precision": "fp16", "device": str(x.device), "gpu": gpu,
              "timer": "wall, one call (dry run)" if dry else "triton.testing.do_bench_cudagraph median",
              "model": name, "rows": [], "winners": {}, "rules_over_winner": {}, "unswept": []}
    rows, best, done = result["rows"], {}, set()

    def write():
        table = {"arch": arch, "source": f"campaign sweep, {time.strftime('%Y-%m-%d')}, {gpu}, "
                                          f"{x.shape[3]}x{x.shape[2]} fp16, model {name}",
                 "tiles": {k: r["tile"] for k, r in sorted(best.items())}}
        result["winners"] = table["tiles"]
        result["rules_over_winner"] = {
            k: round(rule["median_ms"] / r["median_ms"], 3) for k, r in best.items()
            for rule in rows if rule["key"] == k and rule["role"] == "rules" and "median_ms" in rule}
        (out / "tiles.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "sweep.json").write_text(json.dumps(result, indent=2))

    for mode in MODES:
        chain = FC.FusedChain(model, torch.float16, **mode)
        for layer, call in _layers_in_order(chain, x):
            for key, current, rule in _layer_keys(call):
                if key in done:
                    continue
                done.add(key)
                if time.perf_counter() - started > budget_s:
                    result["unswept"].append(key)
                    continue
                # the rules' tile, the table's where it differs, then candidates
                tiles = [("rules", _config(rule))] + ([("table", _config(current))] if current != rule else [])
                tiles += [("candidate", c) for c in candidates(key, [rule, current], 1 if dry else MAX_CANDIDATES)]
                for role, cfg in tiles:
                    row = {"key": key, "layer": layer, "mode": mode or "default", "role": role,
                           "tile": tile_table.as_tile(cfg)}
                    try:
                        with tile_table.override(key, cfg):
                            if not dry:
                                call()  # compile outside the timing
                            row["median_ms"] = round(_median_ms(call, dry, graph=True), 4)
                    except Exception as e:  # noqa: BLE001 -- a tile that does not fit is a result, not the end
                        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    rows.append(row)
                    if "median_ms" in row and row["median_ms"] < best.get(key, {}).get("median_ms", float("inf")):
                        best[key] = row
                write()
        del chain
    write()
    return result
