"""User-typed sizes and devices, shared by the bench, texture, train and stylize commands."""
import pytest
import torch

from instyle.specs import parse_option, parse_size, resolve_device


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


def test_help_does_not_import_torch():
    """`instyle --help` and every subcommand's --help parse without torch, numpy or Pillow (a fast CLI)."""
    import subprocess
    import sys

    code = ("import sys, instyle.cli\n"
            "for argv in (['--help'], ['stylize', '--help'], ['train', '--help'], ['bench', '--help'],\n"
            "             ['serve', '--help']):\n"
            "    try:\n        instyle.cli.main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:] + out.stderr[-500:]


def test_backend_names_match_the_engine_table():
    from instyle.engine.backends import TABLE
    from instyle.specs import BACKEND_NAMES

    assert tuple(TABLE) == BACKEND_NAMES


@pytest.mark.parametrize("text,want", [("prenorm=all", ("prenorm", "all")), ("graphs=off", ("graphs", False)),
                                       ("graphs=True", ("graphs", True)), ("cache_size=3", ("cache_size", 3)),
                                       ("scale=0.5", ("scale", 0.5)), (" compiler = eager ", ("compiler", "eager"))])
def test_backend_options_parse(text, want):
    assert parse_option(text) == want


@pytest.mark.parametrize("bad", ["prenorm", "=all", "prenorm=", "bad key=1"])
def test_bad_backend_options_are_value_errors(bad):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_option(bad)
