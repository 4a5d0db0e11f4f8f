"""The ``async-session-logger`` command: read, follow, collect and replay session logs.

Each command lives in its own module (``sessions``, ``show``, ``tail``, ``collect``,
``replay``, ``serve``) with ``add_parser()`` and ``run(args) -> int``. User errors are one line
on stderr and a non-zero exit status, never a traceback. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from . import collect, replay, serve, sessions, show, tail
from ._common import PROG, CliError, say

__all__ = ["build_parser", "main"]

# Exit status after the output was cut short by a closed pipe (`... | head`), as for SIGPIPE.
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read, follow, collect and replay async_session_logger session logs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in (sessions, show, tail, collect, replay, serve):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `show ID --tree FILE`: argparse gives an optional PATH list (PATH* beside --store) none
    # of the words after an option; they are files all the same.
    if extra and hasattr(args, "paths") and not any(x.startswith("-") for x in extra):
        args.paths = [*args.paths, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status: int = args.run(args)
    except CliError as exc:
        say(f"error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status
