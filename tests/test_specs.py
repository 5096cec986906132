"""User-typed sizes and devices, shared by the bench, texture, train and stylize commands."""
import pytest
import torch

from instyle.specs import parse_size, resolve_device


def test_sizes_are_width_first_and_square_for_one_number():
    assert parse_size("1920x1080") == (1920, 1080)
    assert parse_size(" 512 ") == (512, 512)
    assert parse_size("64X48") == (64, 48)


@pytest.mark.parametrize("bad", ["", "12x", "x12", "0", "3x0", "-4", "1.5x2", "2x3x4"])
def test_bad_sizes_are_value_errors(bad):
    with pytest.raises(ValueError, match="size must be N or WxH"):
        parse_size(bad)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
