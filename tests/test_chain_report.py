"""bench/campaign/chain_report: the fused chain's 4K kernels compiled for sm_90 on the CPU, and its rules."""
import json
import os
import subprocess
import sys

import pytest

from instyle.bench.campaign import chain_report, compile_check


def _row(kernel="_conv_in_kernel", **kw):
    return dict(dict(kernel=kernel, constexprs={"KH": 3}, spill_bytes=0, shared_bytes=1000, utmaldg=0, hgmma=4), **kw)


def test_rules_flag_spills_shared_memory_missing_tma_and_missing_wgmma():
    assert chain_report._violations(_row(), 232448) == []
    assert chain_report._violations(_row(spill_bytes=8), 232448) == ["8 bytes of spills"]
    assert chain_report._violations(_row(shared_bytes=240000), 232448) == ["240000 bytes of shared memory > 232448"]
    assert chain_report._violations(_row("_conv_tma_kernel"), 232448) == [
        "a descriptor-read 3x3 conv without UTMALDG"]
    assert chain_report._violations(_row("_conv_tma_kernel", utmaldg=8), 232448) == []
    assert chain_report._violations(_row(hgmma=0), 232448) == ["a fp16/bf16 conv without HGMMA"]
    assert chain_report._violations(_row(hgmma=0, constexprs={"DOT_IEEE": True}), 232448) == []  # fp32: FMAs
    assert chain_report._violations(_row("_in_apply_kernel", hgmma=0), 232448) == []


def test_specialize_passes_tensor_descriptor_types_through():
    spec = {"kernel": "_k", "args": {"x_desc": "tensordesc<fp16[128,64]>", "n": "i32:16"}, "constexprs": {"B": 1}}
    signature, constants, attrs = compile_check.specialize(["x_desc", "n", "B"], spec)
    assert signature == {"x_desc": "tensordesc<fp16[128,64]>", "n": "i32", "B": "constexpr"}
    assert attrs == {(1,): compile_check.DIVISIBLE}


@pytest.mark.slow
def test_the_4k_chain_compiles_for_sm90_within_the_rules(tmp_path):
    """Every specialization the 4K fp16 chain compiles in any mode: no spills, shared memory within sm_90's
    limit, the TMA conv with UTMALDG, every fp16 conv with HGMMA (exit 0); the report names each one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run([sys.executable, "-m", "instyle.bench.campaign.chain_report", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0 and "ptxas" in out.stderr and "not found" in out.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    kernels = {r["kernel"] for r in report["rows"]}
    assert {"_conv_in_kernel", "_conv_tma_kernel", "_in_apply_kernel", "_block_merge_kernel"} <= kernels
    tma = [r for r in report["rows"] if r["kernel"] == "_conv_tma_kernel"]
    assert tma and all(r["utmaldg"] > 0 and r["hgmma"] > 0 and r["modes"] == ["conv3x3=tma"] for r in tma)
    assert all(r["registers"] and r["spill_bytes"] == 0 for r in report["rows"])
    assert "| _conv_tma_kernel |" in (tmp_path / "report.md").read_text() and report["violations"] == []
