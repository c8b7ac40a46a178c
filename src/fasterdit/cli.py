"""The `fasterdit` command line.

Each subcommand lives in its own module under :mod:`fasterdit.commands` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
lazily so that ``fasterdit --help`` stays fast and a heavy optional dependency of one command
(diffusers for ``prepare``) never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fasterdit import __version__
from fasterdit.errors import UserError

# name -> module; order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "train": "fasterdit.commands.train",
    "sample": "fasterdit.commands.sample",
    "snr": "fasterdit.commands.snr",
    "prepare": "fasterdit.commands.prepare",
    "eval": "fasterdit.commands.eval",
    "info": "fasterdit.commands.info",
}



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fasterdit",
        description="Train Diffusion Transformers faster without changing the architecture (FasterDiT).",
    )
    parser.add_argument("--version", action="version", version=f"fasterdit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        # "resolve": a command may replace -h/--help (sample and eval print the defaults of a --ckpt too)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, conflict_handler="resolve")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"fasterdit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
