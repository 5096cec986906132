"""Which Triton kernels a GPU run compiles, counted on a CPU: launches recorded under the interpreter.

Triton compiles one binary per kernel and specialization: the constexpr values, the pointer dtypes,
and the integer arguments it specializes (equal to 1, divisible by 16). Under TRITON_INTERPRET=1 nothing
is compiled, but every launch passes through `InterpretedFunction.run`; `recording()` notes each
launch's specialization key there, with the kernels' GPU tuning tables swapped in (so the block sizes
are the ones a GPU would use), and `Census.count` is the number of distinct binaries the same work would
compile on a GPU. An estimate of the compile work, not a measurement of it.
"""
from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from dataclasses import dataclass, field

import torch


def _arg_key(value) -> str:
    """How Triton's specialization sees one runtime argument (a host tensor descriptor: its type, as the
    compiler's signature spells it)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if isinstance(value, TensorDescriptor):
        from triton._utils import canonicalize_dtype

        return f"tensordesc<{canonicalize_dtype(value.base.dtype)}[{','.join(map(str, value.block_shape))}]>"
    if isinstance(value, torch.Tensor):
        return "*" + str(value.dtype).removeprefix("torch.")
    if isinstance(value, bool):
        return f"b{int(value)}"
    if isinstance(value, int):
        if value == 1:
            return "1"
        return "i64" if abs(value) >= 2**31 else ("i32:16" if value % 16 == 0 else "i32")
    if isinstance(value, float):
        return "fp32"
    return type(value).__name__


@dataclass
class Census:
    launches: Counter = field(default_factory=Counter)  # specialization key -> launches

    def count(self) -> int:
        return len(self.launches)

    def by_kernel(self) -> dict[str, int]:
        kernels = Counter(key[0] for key in self.launches)
        return dict(sorted(kernels.items()))

    def specializations(self) -> list[dict]:
        """Every distinct launch as {kernel, args: {name: type key}, constexprs: {name: value}} (JSON-able)."""
        return [{"kernel": name, "args": dict(sig), "constexprs": dict(consts)}
                for name, sig, consts in sorted(self.launches, key=str)]


def _gpu_tuning() -> list[tuple[dict, dict]]:
    """(table, GPU values) of every kernel module's tuning table."""
    from instyle.kernels import conv_in_gemm as CI
    from instyle.kernels import conv_in_normalize as CN
    from instyle.kernels import conv_tma as CT
    from instyle.kernels import instance_norm_forward as IN
    return [(IN.TUNING, dict(IN._GPU_TUNING)),
            (CI.TUNING, dict(CI.TUNING, stat_m=CI.GPU_STAT_M, flat_max_cin=15)),
            (CN.TUNING, dict(block_hw=64, block_c=64, num_warps=4)),
            (CT.TUNING, dict(stat_m=CT.GPU_STAT_M))]


@contextlib.contextmanager
def recording(execute: bool = True):
    """Record every interpreted Triton launch (with the GPU tuning tables) into the yielded Census.
    execute=False records without running the kernels (their outputs stay as allocated): enough for code
    whose launches do not depend on tensor values, such as the fused chain at 4K."""
    from triton.runtime.interpreter import InterpretedFunction

    census = Census()
    original = InterpretedFunction.run
    from instyle.kernels import conv_in_gemm as CI
    from instyle.kernels import conv_tma as CT

    def run(self, *args, grid, warmup, **kwargs):
        params = list(inspect.signature(self.fn).parameters.values())
        sig = []
        for p, v in zip(params, args):
            sig.append((p.name, _arg_key(v)))
        consts = tuple(sorted((k, v) for k, v in kwargs.items() if not isinstance(v, torch.Tensor)))
        census.launches[(self.fn.__name__, tuple(sig), consts)] += 1
        if execute:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    from instyle.kernels import stats_finalize as SF

    saved = [(table, dict(table)) for table, _ in _gpu_tuning()]
    pinned = CI._PINNED, CT._PINNED, SF.BLOCK_T
    InterpretedFunction.run = run
    try:
        for table, gpu in _gpu_tuning():
            table.update(gpu)
        CI._PINNED = CT._PINNED = True
        SF.BLOCK_T = SF.GPU_BLOCK_T
        yield census
    finally:
        InterpretedFunction.run = original
        CI._PINNED, CT._PINNED, SF.BLOCK_T = pinned
        for table, values in saved:
            table.clear()
            table.update(values)
