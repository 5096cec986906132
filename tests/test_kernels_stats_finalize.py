"""kernels/stats_finalize.py under the interpreter: the two-launch finalize equals the torch reference
(conv_in_normalize.finalize_ref / finalize_groups_ref) and the float64 statistics of the pixels themselves, for
one tile, ragged last tiles, more tiles than one block, several groups (the phases), per-sample gamma/beta and
channel counts that are not a power of two."""
import pytest
import torch

from instyle.interpreter import interpreting

pytestmark = pytest.mark.skipif(not interpreting(), reason="runs Triton's CPU interpreter (TRITON_INTERPRET=1)")


def partials(y: torch.Tensor, stat_m: int):
    """Per-stat-tile (mean, M2) of y [N, C, H, W] over its pixels in row-major order: what conv_in's epilogue
    writes -- computed here in float64 from the pixels, then stored fp32."""
    from instyle.kernels.conv_in_normalize import Stats

    n, c, h, w = y.shape
    flat = y.double().reshape(n, c, h * w).transpose(1, 2)  # N, HW, C
    means, m2s = [], []
    for start in range(0, h * w, stat_m):
        tile = flat[:, start:start + stat_m]
        m = tile.mean(1)
        means.append(m)
        m2s.append((tile - m[:, None]).square().sum(1))
    return Stats(torch.stack(means, 1).float(), torch.stack(m2s, 1).float(), h * w, stat_m)


def exact(ys: list[torch.Tensor], weight, bias, eps=1e-5):
    """float64 (mean, weight * rstd, bias) of all pixels of the ys together."""
    y = torch.cat([v.double().flatten(2) for v in ys], 2)
    mean, var = y.mean(2), y.var(2, correction=0)
    scale = torch.rsqrt(var + eps) * weight.double()
    return torch.stack([mean, scale, bias.double().expand_as(mean)], 1)


@pytest.mark.parametrize("n,c,h,w,stat_m", [(1, 16, 8, 8, 64),      # one tile
                                            (2, 24, 13, 11, 16),    # ragged last tile, C not a power of two
                                            (1, 3, 97, 89, 16),     # more tiles than one block (BLOCK_T)
                                            (3, 70, 9, 7, 4)])      # C above one channel block
def test_finalize_equals_the_reference_and_the_pixels(n, c, h, w, stat_m):
    from instyle.kernels import conv_in_normalize as cn

    g = torch.Generator().manual_seed(h * w + c)
    y = torch.randn(n, c, h, w, generator=g) * 3 + torch.randn(1, c, 1, 1, generator=g) * 10  # offsets: Chan matters
    weight, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    stats = partials(y, stat_m)
    got = cn.finalize(stats, weight, bias)
    torch.testing.assert_close(got, cn.finalize_ref(stats, weight, bias), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got.double(), exact([y], weight, bias), rtol=1e-4, atol=1e-4)


def test_per_sample_gamma_and_beta():
    from instyle.kernels.stats_finalize import finalize

    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 10, 15, 9, generator=g)
    stats = partials(y, 8)
    weight, bias = torch.rand(3, 10, generator=g) + 0.5, torch.randn(3, 10, generator=g)
    got = finalize(stats.pmean, stats.pm2, stats.hw, stats.stat_m, weight, bias)
    want = torch.stack([exact([y[i:i + 1]], weight[i], bias[i])[0] for i in range(3)])
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_groups_are_one_call_and_equal_the_reference():
    """Four phase outputs of equal size (conv_in_phases) finalize as one output of four times the pixels."""
    from instyle.kernels import conv_in_normalize as cn

    g = torch.Generator().manual_seed(2)
    ys = [torch.randn(2, 12, 11, 7, generator=g) + k for k in range(4)]
    groups = [partials(y, 16) for y in ys]
    weight, bias = torch.rand(12, generator=g) + 0.5, torch.randn(12, generator=g)
    got = cn.finalize_groups(groups, weight, bias)
    torch.testing.assert_close(got, cn.finalize_groups_ref(groups, weight, bias), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got.double(), exact(ys, weight, bias), rtol=1e-4, atol=1e-4)


def test_bad_partials_are_refused():
    from instyle.kernels.stats_finalize import finalize

    p = torch.zeros(1, 5, 4)
    with pytest.raises(AssertionError):
        finalize(p, p, hw=100, stat_m=8, weight=torch.ones(4), bias=torch.zeros(4))  # 5 tiles of 8 < 100 pixels


def test_both_launches_compile_for_sm90(tmp_path):
    """The census of one finalize (two kernels) compiled for sm_90 by compile_check, in a process without the
    interpreter: what a GPU run would build."""
    import json

    from sm90 import assert_compiles_for_sm90

    from instyle.bench.campaign import census
    from instyle.kernels import conv_in_normalize as cn

    stats = partials(torch.randn(2, 24, 13, 11), 16)
    with census.recording() as c:
        cn.finalize(stats, torch.ones(24), torch.zeros(24))
    specs = c.specializations()
    assert sorted(s["kernel"] for s in specs) == ["_block_merge_kernel", "_final_merge_kernel"]
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps(specs))
    assert_compiles_for_sm90("from instyle.bench.campaign.compile_check import main\n"
                             f"print('compiled' if main([{str(path)!r}]) == 0 else 'failed')")


def test_the_op_passes_opcheck():
    """instyle::stats_finalize: schema, fake tensor (shape) implementation, no mutation."""
    from instyle.kernels.stats_finalize import finalize_op

    stats = partials(torch.randn(2, 12, 9, 7), 16)
    torch.library.opcheck(finalize_op, (stats.pmean, stats.pm2, stats.hw, stats.stat_m, torch.ones(12),
                                        torch.zeros(12), 1e-5, 1))
