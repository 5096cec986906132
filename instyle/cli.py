"""The `instyle` command: thin glue over the public API.

Each subcommand lives in the module that owns it and exposes `add_arguments(parser)` and
`run(args) -> int`; heavy imports happen inside `run`, so `instyle --help` stays fast.
Library code raises exceptions; this is the one place that turns them into a message and an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from instyle.errors import BackendUnavailable, MissingDependency, UsageError, install_command

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "stylize": ("instyle.stylize_cli", "stylize image files, folders or globs"),
    "models": ("instyle.models_cli", "list the shipped styles"),
    "convert": ("instyle.convert_cli", "convert a pytorch/examples .pth checkpoint to .safetensors"),
    "train": ("instyle.train.cli", "train a feed-forward generator"),
    "gatys": ("instyle.train.gatys_cli", "optimise one image (Gatys et al. baseline)"),
    "texture": ("instyle.train.texture_cli", "sample a texture of any size from a texture model"),
    "export": ("instyle.export.cli", "export to ONNX, TensorRT or a Triton-server repository"),
    "serve": ("instyle.serve_cli", "a local web page and HTTP API over one warm model"),
    "quantize": ("instyle.export.quantize_cli", "build and check the int8 OpenVINO model (NNCF) ahead of time"),
    "bench": ("instyle.bench.cli", "latency benchmark across backends, precisions and sizes"),
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every `finally` (temp-file cleanup) runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    from instyle import __version__

    parser = argparse.ArgumentParser(prog="instyle", description="Fast neural style transfer.")
    parser.add_argument("--version", action="version", version=f"instyle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help(sys.stderr)
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args._run(args) or 0)
    except UsageError as e:
        print(f"instyle {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except MissingDependency as e:
        print(f"instyle {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BackendUnavailable as e:  # an explicit --backend that cannot run here: say why and how to fix it
        print(f"instyle {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "instyle":
            raise  # a bug in instyle itself, not a partial install
        print(f"instyle {args.command}: error: {e.name.split('.')[0]} is not installed: {install_command(e.name)}",
              file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, MemoryError, OverflowError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
