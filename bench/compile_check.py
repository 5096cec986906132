"""Compile recorded kernel specializations for a GPU target with this machine's Triton, no GPU needed.

    python -m instyle.bench.compile_check kernels.json [--arch 90]

`kernels.json` is what `campaign --dry-run` records (bench/census.py): every distinct launch of the
Triton kernels. Compiling them here catches what the interpreter cannot (types, layouts, shared-memory
limits) with the Triton version at hand; run it under another Triton (say the GPU machine's) from a side
virtual environment to check that one too. Needs Triton's bundled ptxas; exits 1 if any fails.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

MODULES = ("instyle.kernels.instance_norm_forward", "instyle.kernels.instance_norm_backward",
           "instyle.kernels.conv_in_gemm", "instyle.kernels.conv_in_normalize")
TYPES = {"*float16": "*fp16", "*bfloat16": "*bf16", "*float32": "*fp32", "1": "i32", "i32": "i32",
         "i32:16": "i32", "i64": "i64", "fp32": "fp32"}
OPTIONS = ("num_warps", "num_stages")


def kernels() -> dict:
    found = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("_") and attr.endswith("_kernel") and hasattr(value, "arg_names"):
                found[attr] = value
    return found


SMEM_LIMIT = {90: 232448, 80: 166912}  # bytes of shared memory one block may use (H100/H200, A100)


def compile_one(fn, spec: dict, arch: int) -> int:
    """Compile one specialization; returns the shared memory (bytes) the binary needs per block."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {k: v for k, v in spec["constexprs"].items() if k not in OPTIONS}
    options = {k: v for k, v in spec["constexprs"].items() if k in OPTIONS}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        else:
            sig[name] = TYPES[spec["args"][name]]
    compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=options)
    return int(compiled.metadata.shared)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.compile_check", description=__doc__.split("\n\n")[0])
    p.add_argument("kernels", help="kernels.json from campaign --dry-run")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: this compiles for a GPU")
    import triton

    specs = json.loads(open(a.kernels).read())
    fns = kernels()
    failed = 0
    limit = SMEM_LIMIT.get(a.arch)
    for spec in specs:
        try:
            shared = compile_one(fns[spec["kernel"]], spec, a.arch)
        except Exception as e:  # noqa: BLE001 -- report every failure, not just the first
            failed += 1
            print(f"FAILED {spec['kernel']} {spec['constexprs']}: {type(e).__name__}: {str(e)[-400:]}", flush=True)
            continue
        if limit and shared > limit:  # the launch would fail with OutOfResources on the GPU
            failed += 1
            print(f"TOO MUCH SHARED MEMORY {spec['kernel']} {spec['constexprs']}: {shared} > {limit} bytes",
                  flush=True)
    print(f"triton {triton.__version__}, sm_{a.arch}: {len(specs) - failed}/{len(specs)} specializations compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
