"""conv_in_phases (the upsampling 3x3 conv as four 2x2 phase launches, kernels/upsample_phase.py) against
the generator's layer written with torch.nn.functional (IN -> act -> + skip -> F.interpolate -> F.pad
reflect -> F.conv2d), under the interpreter: batch 2, odd sizes, 1-pixel-wide inputs, ragged tiles.

Tolerance derived as in test_kernels_conv_in.py: max|fused - F_fp32| <= 2 * max|F_lowp - F_fp32| + atol,
with the conv's atol (a sum of up to 4 * Cin products in another order than F.conv2d's). Statistics:
the four phases' partials merged by finalize_groups against norm_params_ref of the stored output, at the
bound test_kernels_conv_in.py uses for one launch's partials.
"""
import pytest
import torch
from test_kernels_conv_in import CONV_ATOL, _id, functional_layer, make_case, small_tiles
from tolerances import assert_derived_close

from instyle.kernels import conv_in_gemm as CI

pytestmark = pytest.mark.interpreter  # Triton kernels on CPU tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=_id)
@pytest.mark.parametrize("name,size", [("up_skip", (3, 5)), ("up", (5, 3)), ("up", (1, 4)), ("up_skip", (2, 1))])
def test_phase_launches_vs_functional(monkeypatch, name, size, dtype):
    small_tiles(monkeypatch, "taps")
    c = make_case(name, dtype, size=size)
    norm = CI.norm_params_ref(c["x"], c["gamma"], c["beta"])
    y, groups = CI.conv_in_phases(c["x"], CI.pack_phase_weights(c["w"], dtype), None, norm=norm, relu=c["relu"],
                                  skip=c["skip"])
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last) and len(groups) == 4
    c = dict(c, bias=None)
    ref = functional_layer(c)
    lowp = None if dtype == torch.float32 else functional_layer(c, round_to=dtype)
    assert_derived_close("y", y, ref, lowp, dtype, atol=CONV_ATOL)
    gamma, beta = 1 + torch.rand(y.shape[1]), torch.randn(y.shape[1])
    torch.testing.assert_close(CI.finalize_groups(groups, gamma, beta), CI.norm_params_ref(y, gamma, beta),
                               rtol=2e-5, atol=1e-5)


def test_phase_weights_packed_per_phase():
    """pack_phase_weights is pack_weight of each phase's summed 2x2 kernel, phase index 2a + b."""
    w = torch.randn(8, 16, 3, 3)
    packed = CI.pack_phase_weights(w, torch.float32)
    assert packed.shape == (4, 4 * 16, 8)
    top_left = w[:, :, :1, :1].sum((2, 3))      # phase (0, 0), tap (0, 0): kernel row 0, column 0 alone
    bottom_right = w[:, :, 1:, 1:].sum((2, 3))  # phase (0, 0), tap (1, 1): rows 1-2 x columns 1-2 summed
    torch.testing.assert_close(packed[0, :16], top_left.t())
    torch.testing.assert_close(packed[0, 3 * 16:], bottom_right.t())
