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

#: the longest error message printed (a message that quotes a value read from a file is cut here)
MAX_MESSAGE = 2000
#: the exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells report it
EXIT_INTERRUPTED = 130

# name -> module; order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "train": "fasterdit.commands.train",
    "sample": "fasterdit.commands.sample",
    "snr": "fasterdit.commands.snr",
    "prepare": "fasterdit.commands.prepare",
    "eval": "fasterdit.commands.eval",
    "info": "fasterdit.commands.info",
    "export": "fasterdit.commands.export",
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


def one_line(message: str) -> str:
    """``message`` as one printable line of at most :data:`MAX_MESSAGE` characters: line breaks become
    spaces, and characters the terminal cannot encode (a file name that is not UTF-8) are escaped, so
    that printing an error can never fail or flood the terminal."""
    text = " ".join(message.split("\n"))
    if len(text) > MAX_MESSAGE:
        text = f"{text[: MAX_MESSAGE - 40]}... ({len(text) - MAX_MESSAGE + 40} more characters)"
    encoding = sys.stderr.encoding or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def main(argv: Sequence[str] | None = None) -> int:
    command = "fasterdit"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "_run"):
            parser.print_help()
            return 0
        command = f"fasterdit {args.command}"
        return int(args._run(args) or 0)
    except UserError as err:
        print(one_line(f"{command}: error: {err}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C where a command has no handling of its own (start-up, loading)
        print(f"{command}: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
