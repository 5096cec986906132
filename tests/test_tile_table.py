"""kernels/tile_table: the measured-tile table the sweep writes and the conv launchers read before their rules."""
import json

import pytest
import torch
import triton

from instyle.kernels import tile_table as TT

TILE = {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 4}


def test_layer_key_names_shape_class_order_and_dtype():
    assert TT.layer_key("conv_in", cin=128, cout=64, kernel=3, upsample=True) == "conv_in k3 s1 up 128>64 taps float16"
    assert TT.layer_key("conv_in", cin=128, cout=128, kernel=3, prologue="norm+skip+wskip") == \
        "conv_in k3 s1 128>128 taps norm+skip+wskip float16"
    assert TT.layer_key("conv_in", cin=32, cout=3, kernel=9, pix=5, dtype=torch.bfloat16) == \
        "conv_in k9 s1 32>3 taps pix5 bfloat16"


@pytest.fixture
def table(tmp_path, monkeypatch):
    def write(arch, tiles):
        path = tmp_path / f"tiles-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"arch": arch, "tiles": tiles}))
        monkeypatch.setattr(TT, "TABLE_PATH", path)
    return write


def test_table_applies_on_its_arch_only_and_overrides_win(table):
    key, cpu = "conv_in k3 s1 128>128 taps float16", torch.device("cpu")  # no CUDA tensor: the census's sm_90
    assert TT.lookup(key, cpu) is None  # no table
    table("sm_90", {key: TILE})
    cfg = TT.lookup(key, cpu)
    assert cfg.kwargs == {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 32} and (cfg.num_warps, cfg.num_stages) == (8, 4)
    assert TT.lookup("conv_in k3 s2 32>64 taps float16", cpu) is None  # a layer it does not list: the rules
    other = triton.Config(dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64), num_warps=4, num_stages=3)
    with TT.override(key, other):
        assert TT.as_tile(TT.lookup(key, cpu)) == TT.as_tile(other)
    assert TT.as_tile(TT.lookup(key, cpu)) == TILE
    table("sm_80", {key: TILE})  # another GPU's measurements do not apply here
    assert TT.lookup(key, cpu) is None


def test_a_malformed_table_is_one_clear_error(table):
    table("sm_90", {"k": {"BLOCK_M": 128}})
    with pytest.raises(ValueError, match="needs exactly BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages"):
        TT.lookup("k", torch.device("cpu"))


@pytest.mark.interpreter
def test_launcher_runs_the_table_tile_and_stays_exact(table, monkeypatch):
    """conv_in with pinned tiles (as on a GPU) picks the table's tile for its layer key; the result is unchanged."""
    from instyle.kernels import conv_in_gemm as CI

    monkeypatch.setattr(CI, "_PINNED", True)
    monkeypatch.setitem(CI.TUNING, "stat_m", 128)
    monkeypatch.setitem(CI.TUNING, "flat_max_cin", 15)  # the GPU K orders
    x = torch.randn(1, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 16, 3, 3) / 12
    key = TT.layer_key("conv_in", cin=16, cout=24, kernel=3, dtype=torch.float32)  # no prologue: a raw input
    table("sm_90", {key: dict(TILE, BLOCK_M=128, BLOCK_N=32, num_stages=2)})
    with TT.recording() as picks:
        y, _ = CI.conv_in(x, CI.pack_weight(w, torch.float32), kernel=3)
    rule = TT.as_tile(CI.pinned_config(16, 24, 1, False, 4))  # what the rules would have picked
    assert picks == [(key, dict(TILE, BLOCK_M=128, BLOCK_N=32, num_stages=2), rule)] and rule != picks[0][1]
    ref, _ = CI.conv_in_ref(x, w)
    torch.testing.assert_close(y, ref, rtol=0, atol=2e-5 * ref.abs().max().item())
