"""MQTT connection options shared by ``collect`` and ``replay-dead-letters``: TLS and auth.

Passwords never travel on the command line (where ``ps`` and shell history show them): they
come from an environment variable named by ``--password-env``, or from a prompt.
"""

from __future__ import annotations

import argparse
import getpass
import os
import ssl
import sys

from ._common import CliError

__all__ = ["add_auth_options", "password", "tls_context"]


def add_auth_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--tls``, ``--cafile``, ``--username``, ``--password-env``."""
    group = parser.add_argument_group("broker TLS and authentication")
    group.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, verifying the broker against the system's CAs",
    )
    group.add_argument(
        "--cafile",
        metavar="PEM",
        help="verify the broker against this CA bundle instead (implies --tls)",
    )
    group.add_argument("--username", metavar="NAME", help="broker user name")
    group.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from environment variable VAR (without it, --username "
        "prompts for the password on a terminal)",
    )


def password(args: argparse.Namespace) -> str | None:
    """Return the broker password from the environment or a prompt, or None without a user."""
    if args.password_env:
        if args.username is None:
            raise CliError("--password-env needs --username", 2)
        value = os.environ.get(args.password_env)
        if value is None:
            raise CliError(f"--password-env: environment variable {args.password_env} is not set")
        return value
    if args.username is None:
        return None
    if not sys.stdin.isatty():
        raise CliError(
            f"no password for user {args.username!r}: set --password-env VAR, or run on a "
            "terminal to be prompted"
        )
    try:
        return getpass.getpass(f"MQTT password for {args.username}: ")
    except EOFError:
        raise CliError("no password given") from None


def tls_context(args: argparse.Namespace, *, tls: bool = False) -> ssl.SSLContext | None:
    """Return a verifying TLS context for ``--tls``/``--cafile`` (or ``tls``), else None."""
    if not (tls or args.tls or args.cafile):
        return None
    try:
        return ssl.create_default_context(cafile=args.cafile)
    except FileNotFoundError:
        raise CliError(f"--cafile: {args.cafile}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise CliError(f"--cafile: {args.cafile}: not a CA bundle ({exc})") from None
