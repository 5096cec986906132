"""The fused chain's kernels at 4K, compiled for sm_90 on this machine (no GPU): registers, spills, shared memory,
TMA loads and warpgroup MMAs per specialization, and the rules a GPU loan relies on.

    python -m instyle.bench.campaign.chain_report [--size 3840x2160] [--batch 1] [--out DIR]

1. Census (a child process under TRITON_INTERPRET=1): the fused chain of the paper's generator (JohnsonNet(),
   width 32, 5 blocks) runs once per mode (the defaults, then first_layer=window, upsample=phase, conv3x3=tma,
   each alone: every layer variant any combination launches) at the full size with the GPU tiles; launches are
   recorded, not executed (census.recording(execute=False)), so a 4K frame costs allocations, not compute.
2. Each distinct specialization is compiled for sm_<arch> (compile_check.compile_one) and measured
   (compile_check.resources: ptxas -v, cuobjdump -sass).
3. Rules, each a failure (exit 1): a spill; shared memory over the arch's per-block limit; a 3x3 conv read
   through tensor descriptors (_conv_tma_kernel) without UTMALDG in its SASS; a fp16/bf16 conv without HGMMA.
Writes report.json (every row) and report.md (the table) into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODES = ({}, {"first_layer": "window"}, {"upsample": "phase"}, {"conv3x3": "tma"})
CONV_KERNELS = ("_conv_in_kernel", "_conv_tma_kernel")


def record(size: tuple[int, int], batch: int, precision: str) -> list[dict]:
    """Every distinct launch of the chain's modes at size (W, H) (runs under TRITON_INTERPRET=1)."""
    import torch

    from instyle.engine.backends import fused_gemm as FC
    from instyle.models.johnson import JohnsonNet

    from .census import recording

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model = JohnsonNet().eval()
    x = torch.zeros(batch, 3, size[1], size[0])
    specs: dict[str, dict] = {}
    with torch.no_grad():
        for mode in MODES:
            with recording(execute=False) as census:
                FC.FusedChain(model, dtype, **mode)(x)
            for spec in census.specializations():
                specs.setdefault(json.dumps(spec, sort_keys=True), dict(spec, modes=[]))["modes"].append(
                    ",".join(f"{k}={v}" for k, v in mode.items()) or "default")
    return list(specs.values())


def _violations(row: dict, limit: int | None) -> list[str]:
    found = []
    if row["spill_bytes"]:
        found.append(f"{row['spill_bytes']} bytes of spills")
    if limit and row["shared_bytes"] > limit:
        found.append(f"{row['shared_bytes']} bytes of shared memory > {limit}")
    if row["kernel"] == "_conv_tma_kernel" and not row["utmaldg"]:
        found.append("a descriptor-read 3x3 conv without UTMALDG")
    if row["kernel"] in CONV_KERNELS and not row["constexprs"].get("DOT_IEEE") and not row["hgmma"]:
        found.append("a fp16/bf16 conv without HGMMA")
    return found


def _layer_flags(constexprs: dict) -> str:
    """The constexprs that tell the layers apart, compactly."""
    keep = ("KH", "STRIDE", "UPSAMPLE", "PHASE", "NORM", "RELU", "HAS_SKIP", "WRITE_SKIP", "FLAT_K", "PADDED", "PIX",
            "PAD", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_HW", "BLOCK_C", "BLOCK_T", "num_warps", "num_stages")
    return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items()
                    if k in keep and v not in (False, 0))


def markdown(report: dict) -> str:
    lines = [f"# The fused chain's kernels for sm_{report['arch']} ({report['size'][0]}x{report['size'][1]}, "
             f"batch {report['batch']}, {report['precision']})", "",
             f"triton {report['triton']}; {len(report['rows'])} specializations; compiled on a CPU (no GPU): "
             "registers and spills from ptxas -v, UTMALDG/HGMMA counted in cuobjdump -sass.", "",
             "| kernel | specialization | modes | regs | spill B | shared B | UTMALDG | HGMMA | ptxas warnings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['kernel']} | {_layer_flags(r['constexprs'])} | {' '.join(r['modes'])} | {r['registers']} | "
                     f"{r['spill_bytes']} | {r['shared_bytes']} | {r['utmaldg']} | {r['hgmma']} | "
                     f"{'; '.join(r['warnings']) or '-'} |")
    lines += ["", "Violations: " + ("; ".join(report["violations"]) or "none") + "."]
    return "\n".join(lines) + "\n"


def _parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.campaign.chain_report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_parse_size, default=(3840, 2160), help="WxH (default 3840x2160)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=("fp16", "bf16"), default="fp16")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)")
    p.add_argument("--out", type=Path, default=Path("chain-report"), help="folder for report.json and report.md")
    p.add_argument("--record", type=Path, help=argparse.SUPPRESS)  # the census child writes its specs here
    a = p.parse_args(argv)
    if a.record:
        a.record.write_text(json.dumps(record(a.size, a.batch, a.precision)))
        return 0
    from instyle.interpreter import interpreting

    if interpreting():
        p.error("unset TRITON_INTERPRET: the census runs in a child process, the compile here")
    import triton

    from .compile_check import SMEM_LIMIT, compile_one, kernels, resources

    a.out.mkdir(parents=True, exist_ok=True)
    specs_path = a.out / "kernels.json"
    child = [sys.executable, "-m", "instyle.bench.campaign.chain_report", "--size", f"{a.size[0]}x{a.size[1]}",
             "--batch", str(a.batch), "--precision", a.precision, "--record", str(specs_path)]
    subprocess.run(child, env=dict(os.environ, TRITON_INTERPRET="1"), check=True)
    specs = json.loads(specs_path.read_text())
    fns, limit = kernels(), SMEM_LIMIT.get(a.arch)
    rows, violations = [], []
    for i, spec in enumerate(sorted(specs, key=lambda s: (s["kernel"], json.dumps(s["constexprs"]))), 1):
        print(f"[{i}/{len(specs)}] {spec['kernel']} {_layer_flags(spec['constexprs'])}", flush=True)
        try:
            row = dict(spec, **resources(compile_one(fns[spec["kernel"]], spec, a.arch), a.arch))
        except Exception as e:  # noqa: BLE001 -- a failed compile is a row and a violation, not the end
            row = dict(spec, registers=None, spill_bytes=0, shared_bytes=0, utmaldg=0, hgmma=0,
                       warnings=[f"FAILED: {type(e).__name__}: {str(e)[-300:]}"])
            violations.append(f"{spec['kernel']} {_layer_flags(spec['constexprs'])}: failed to compile")
        violations += [f"{spec['kernel']} {_layer_flags(spec['constexprs'])}: {v}" for v in _violations(row, limit)]
        rows.append(row)
    report = {"arch": a.arch, "size": list(a.size), "batch": a.batch, "precision": a.precision,
              "triton": triton.__version__, "rows": rows, "violations": violations}
    (a.out / "report.json").write_text(json.dumps(report, indent=1))
    (a.out / "report.md").write_text(markdown(report))
    print(f"{len(rows)} specializations for sm_{a.arch}; violations: {len(violations)} -> {a.out / 'report.md'}")
    for v in violations:
        print("VIOLATION", v)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
