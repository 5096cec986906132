"""Phase-decomposed upsampling conv (kernels/upsample_phase.py) against the direct computation.

Both in float64: F.interpolate(nearest x2) + F.pad(reflect 1) + F.conv2d is the truth. The phase form
adds the same products in another order (weights summed first), so the two differ only by float64
re-association: at most ~ (taps + 1) * eps64 * sum|w||x| per output, bounded here by
    tol = 16 * eps64 * max(sum over Cin and taps of |w| * max|x|)   (16 > 9 taps + summing 2..4 weights).
"""
import pytest
import torch
import torch.nn.functional as F

from instyle.kernels import upsample_phase as UP


def direct(x, w, b):
    return F.conv2d(F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1,) * 4, mode="reflect"), w, b)


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1), (2, 2), (1, 5), (3, 2), (5, 7)])
def test_phase_form_equals_upsample_reflect_conv(hw):
    """1- and 2-pixel-wide inputs included: reflect of the upsampled grid is replicate of the stored one."""
    torch.manual_seed(hw[0] * 10 + hw[1])
    x = torch.randn(2, 5, *hw, dtype=torch.float64)
    w = torch.randn(3, 5, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    ref = direct(x, w, b)
    y = UP.upconv_phase_ref(x, w, b)
    assert y.shape == ref.shape
    tol = 16 * torch.finfo(torch.float64).eps * (w.abs().sum((1, 2, 3)).max() * x.abs().max() + b.abs().max())
    assert (y - ref).abs().max() <= tol


def test_phase_form_is_not_the_reflect_of_the_stored_input():
    """The border rule matters: reflect padding of the stored input (instead of replicate) gives another
    result at the border, so the test above can tell the two apart."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    pw = UP.phase_weights(w)
    wrong = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect")[:, :, 0:4, 0:5], pw[0, 0])
    right = UP.upconv_phase_ref(x, w)[:, :, 0::2, 0::2]
    assert (wrong - right).abs().max() > 1e-3


def test_phase_weights_sum_to_the_kernel_per_phase():
    """Each phase's 2x2 kernel holds all 9 taps' weights once (every tap lands on one of the 2x2 rows)."""
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    pw = UP.phase_weights(w)
    for a in range(2):
        for b in range(2):
            assert torch.allclose(pw[a, b].sum((2, 3)), w.sum((2, 3)), rtol=0, atol=1e-12)


def test_phase_weights_need_a_3x3_kernel():
    with pytest.raises(ValueError, match="3x3"):
        UP.phase_weights(torch.zeros(1, 1, 5, 5))
