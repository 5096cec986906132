"""Compile recorded kernel specializations for a GPU target with this machine's Triton, no GPU needed.

    python -m instyle.bench.campaign.compile_check kernels.json [--arch 90] [--dump DIR]

`kernels.json` is what `campaign --dry-run` records (census.py): every distinct launch of the
Triton kernels. Compiling them here catches what the interpreter cannot (types, layouts, shared-memory
limits) with the Triton version at hand; run it under another Triton (say the GPU machine's) from a side
virtual environment to check that one too. Needs Triton's bundled ptxas; exits 1 if any fails.

Each launch is specialized the way Triton's launcher does it on a GPU: integers equal to 1 become
constants, integers divisible by 16 carry tt.divisibility=16, and so do pointers (assumed 16-byte aligned,
as torch allocates them; the census does not record alignment). `--dump DIR` writes each binary's PTX and
TTGIR without debug info, locations, comments or the kernel's name, so that two dumps of the same
specializations (say before and after a refactor of a kernel) compare with one `diff -r`.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import re
import sys
from pathlib import Path

from instyle.interpreter import interpreting

MODULES = ("instyle.kernels.instance_norm_forward", "instyle.kernels.instance_norm_backward",
           "instyle.kernels.conv_in_gemm", "instyle.kernels.conv_in_normalize", "instyle.kernels.stats_finalize",
           "instyle.kernels.conv_tma")
TYPES = {"*float16": "*fp16", "*bfloat16": "*bf16", "*float32": "*fp32", "i32": "i32", "i32:16": "i32",
         "i64": "i64", "fp32": "fp32"}  # census key -> Triton type ("1" is a constant, see `specialize`)
OPTIONS = ("num_warps", "num_stages")
DIVISIBLE = [["tt.divisibility", 16]]  # the attribute Triton's launcher gives an argument divisible by 16


def kernels() -> dict:
    found = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("_") and attr.endswith("_kernel") and hasattr(value, "arg_names"):
                found[attr] = value
    return found


SMEM_LIMIT = {90: 232448, 80: 166912}  # bytes of shared memory one block may use (H100/H200, A100)


def specialize(arg_names: list[str], spec: dict) -> tuple[dict, dict, dict]:
    """(signature, constants, attributes) of one recorded launch, as Triton's launcher on a GPU makes them:
    recorded constexprs and integers equal to 1 are constants; i32:16 integers and pointers are divisible
    by 16. Launch options (num_warps, num_stages) are not arguments and are left out."""
    constants = {k: v for k, v in spec["constexprs"].items() if k not in OPTIONS}
    signature, attrs = {}, {}
    for index, name in enumerate(arg_names):
        kind = spec["args"].get(name)
        if name in constants:
            signature[name] = "constexpr"
        elif kind == "1":
            signature[name] = "constexpr"
            constants[name] = 1
        elif kind.startswith("tensordesc"):  # a host tensor descriptor: the type is its key
            signature[name] = kind
        else:
            signature[name] = TYPES[kind]
            if kind == "i32:16" or kind.startswith("*"):
                attrs[(index,)] = DIVISIBLE
    return signature, constants, attrs


def compile_one(fn, spec: dict, arch: int):
    """Compile one specialization for sm_<arch>; returns Triton's CompiledKernel (asm, metadata.shared)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {k: v for k, v in spec["constexprs"].items() if k in OPTIONS}
    signature, constants, attrs = specialize(fn.arg_names, spec)
    return triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


# ------------------------------------------------------------------------------------------ resources
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def resources(compiled, arch: int) -> dict:
    """What the binary costs and holds: registers and spill bytes per thread and ptxas warnings (ptxas -v run
    again on its PTX, the options Triton used), shared memory, and the SASS counts that say whether the data
    path is Hopper's (UTMALDG: TMA loads; HGMMA: warpgroup MMAs), from Triton's bundled ptxas and cuobjdump."""
    import subprocess
    import tempfile

    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        ptx.write_text(compiled.asm["ptx"])
        cubin.write_bytes(compiled.asm["cubin"])
        log = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}a",
                              str(ptx), "-o", str(Path(tmp) / "again.cubin")], capture_output=True, text=True)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(cubin)], capture_output=True, text=True)
    if log.returncode or sass.returncode:
        raise RuntimeError(f"ptxas/cuobjdump failed: {(log.stderr + sass.stderr)[-400:]}")
    regs, spills = _PTXAS_REGS.search(log.stderr), _PTXAS_SPILL.search(log.stderr)
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass.stdout, re.MULTILINE)
    return {"registers": int(regs[1]) if regs else None,
            "spill_bytes": int(spills[1]) + int(spills[2]) if spills else 0,
            "shared_bytes": int(compiled.metadata.shared),
            "utmaldg": ops.count("UTMALDG"), "hgmma": ops.count("HGMMA"),
            "warnings": [ln.strip() for ln in log.stderr.splitlines() if "warning" in ln.lower()]}


# ---------------------------------------------------------------------------------------------- dumps
# What differs between two builds of the same code and is not code: source locations (PTX .loc/.file
# and the DWARF sections, the $L__tmp labels that delimit inlined scopes; MLIR loc(...) and #loc lines),
# comments, the kernel's name, and in MLIR the SSA value names (taken from the source's variable names)
# and the order in which constants were hoisted to the top of the function.
_PTX_DEBUG_LINE = re.compile(r"^\s*(\.loc|\.file)\s|^\$L__(tmp|func_begin|func_end)\d+:$")
_MLIR_LOC = re.compile(r"\s*loc\((?:[^()]|\([^()]*\))*\)")
_MLIR_VALUE = re.compile(r"%[\w.$-]+")
_MLIR_CONSTANT = re.compile(r"^\s*(%[\w.$-]+) = (arith\.constant .*)$")


def comparable_ptx(ptx: str, kernel: str) -> str:
    """PTX without debug info, comments or the kernel's name."""
    ptx = ptx.split("\t.section\t.debug", 1)[0]  # the DWARF sections close the file
    lines = []
    for line in ptx.splitlines():
        line = line.split("//", 1)[0].rstrip()
        if line and not _PTX_DEBUG_LINE.match(line):
            lines.append(line.replace(kernel, "KERNEL"))
    return "\n".join(lines) + "\n"


def comparable_ttgir(ttgir: str, kernel: str) -> str:
    """TTGIR without location attributes, #loc definitions or the kernel's name, values renamed by
    `_number_values`."""
    lines = []
    for line in ttgir.splitlines():
        if line.startswith("#loc"):
            continue
        line = _MLIR_LOC.sub("", line).rstrip()
        if line:
            lines.append(line.replace(kernel, "KERNEL"))
    return "\n".join(_number_values(lines)) + "\n"


def _number_values(lines: list[str]) -> list[str]:
    """Constants named %cI after their value and sorted where they stand in runs; every other value %vI
    in order of first appearance."""
    constants = {m[1]: m[2] for m in map(_MLIR_CONSTANT.match, lines) if m}
    rank = {value: i for i, value in enumerate(sorted(set(constants.values())))}
    names = {name: f"%c{rank[value]}" for name, value in constants.items()}
    others = itertools.count()

    def rename(m: re.Match) -> str:
        if m[0] not in names:
            names[m[0]] = f"%v{next(others)}"
        return names[m[0]]

    renamed = [_MLIR_VALUE.sub(rename, line) for line in lines]
    out: list[str] = []
    for is_constant, run in itertools.groupby(renamed, key=lambda line: bool(_MLIR_CONSTANT.match(line))):
        out += sorted(run) if is_constant else list(run)
    return out


def spec_id(spec: dict) -> str:
    """A short stable name for one specialization: the kernel's name and a hash of its key."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"{spec['kernel']}-{digest}"


def dump(compiled, spec: dict, folder: Path) -> None:
    """Write <spec_id>.ptx / .ttgir (comparable forms) and .json (the specialization) into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / spec_id(spec)
    stem.with_suffix(".ptx").write_text(comparable_ptx(compiled.asm["ptx"], spec["kernel"]))
    stem.with_suffix(".ttgir").write_text(comparable_ttgir(compiled.asm["ttgir"], spec["kernel"]))
    stem.with_suffix(".json").write_text(json.dumps(spec, sort_keys=True, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.campaign.compile_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("kernels", help="kernels.json from campaign --dry-run")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)")
    p.add_argument("--dump", type=Path, help="write each binary's PTX and TTGIR (comparable forms) here")
    a = p.parse_args(argv)
    if interpreting():
        p.error("unset TRITON_INTERPRET: this compiles for a GPU")
    import triton

    specs = json.loads(open(a.kernels).read())
    fns = kernels()
    failed = 0
    limit = SMEM_LIMIT.get(a.arch)
    for spec in specs:
        try:
            compiled = compile_one(fns[spec["kernel"]], spec, a.arch)
        except Exception as e:  # noqa: BLE001 -- report every failure, not just the first
            failed += 1
            print(f"FAILED {spec['kernel']} {spec['constexprs']}: {type(e).__name__}: {str(e)[-400:]}", flush=True)
            continue
        if a.dump:
            dump(compiled, spec, a.dump)
        shared = int(compiled.metadata.shared)
        if limit and shared > limit:  # the launch would fail with OutOfResources on the GPU
            failed += 1
            print(f"TOO MUCH SHARED MEMORY {spec['kernel']} {spec['constexprs']}: {shared} > {limit} bytes",
                  flush=True)
    print(f"triton {triton.__version__}, sm_{a.arch}: {len(specs) - failed}/{len(specs)} specializations compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
