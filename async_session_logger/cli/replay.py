"""``replay-dead-letters FILE --to TARGET``: re-send dead letters, keep what still fails."""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
import warnings
from urllib.parse import unquote, urlsplit

from .._errors import ConfigurationError
from .._reader import ReaderWarning
from .._replay import replay_dead_letters
from ..sinks import FileSink, Sink
from ._common import CliError, warn
from ._mqtt import add_auth_options, password, tls_context

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command."""
    parser = commands.add_parser(
        "replay-dead-letters",
        help="re-send the entries of a dead-letter file",
        description="Re-send the entries of a dead-letter file to a file or an MQTT broker. "
        "What is re-sent leaves the file; what fails, and the letters of other sinks, stay "
        "in it. By default only the letters of the target's kind of sink are re-sent "
        "(file: or mqtt:).",
    )
    parser.add_argument("file", metavar="FILE", help="the dead-letter file")
    parser.add_argument(
        "--to",
        required=True,
        metavar="TARGET",
        help="file:PATH (may hold {date} and {session_id}), or "
        "mqtt[s]://[USER@]HOST[:PORT][/TOPIC] (topic default logs/{session_id})",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--from-sink",
        action="append",
        metavar="NAME",
        help="re-send the letters of this sink name (repeat for several; default: "
        "'file' for file:, 'mqtt' for mqtt:)",
    )
    which.add_argument(
        "--all-sinks", action="store_true", help="re-send every letter, whatever its sink"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave FILE unchanged (re-send and report only)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long one batch may take before it counts as failed (default 10)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, metavar="N", help="retries of a failed batch (default 2)"
    )
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    add_auth_options(parser)
    parser.set_defaults(run=run)


def target_sink(args: argparse.Namespace) -> tuple[Sink, str]:
    """Build the sink ``--to`` names, and a description of it without credentials."""
    target: str = args.to
    if target.startswith("file:"):
        path = target.removeprefix("file:").removeprefix("//")
        if not path:
            raise CliError("--to file: needs a path, e.g. file:recovered.jsonl", 2)
        try:
            return FileSink(path), f"file {path}"
        except ConfigurationError as exc:
            raise CliError(f"--to: {exc}", 2) from exc
    if target.startswith(("mqtt://", "mqtts://")):
        return _mqtt_sink(args, target)
    raise CliError(
        f"--to: unknown target {target!r}; use file:PATH or mqtt://HOST[:PORT][/TOPIC]", 2
    )


def _mqtt_sink(args: argparse.Namespace, target: str) -> tuple[Sink, str]:
    url = urlsplit(target)
    if url.password is not None:
        raise CliError("--to: no password in the URL, please: use --password-env VAR", 2)
    try:
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise CliError(f"--to: {exc}", 2) from None
    if not url.hostname:
        raise CliError(f"--to: no host in {target!r}", 2)
    topic = unquote(url.path.lstrip("/")) or "logs/{session_id}"
    if url.username is not None:
        if args.username is not None and args.username != url.username:
            raise CliError("--to names another user than --username", 2)
        args.username = unquote(url.username)
    from ..sinks.mqtt import MqttSink  # aiomqtt only when MQTT is used

    try:
        sink = MqttSink(
            url.hostname,
            port,
            topic=topic,
            qos=args.qos,
            username=args.username,
            password=password(args),
            tls_context=tls_context(args, tls=url.scheme == "mqtts"),
            logger_topic=None,  # a one-off replay leaves no retained presence behind
            reconnect_max=2.0,
            connect_timeout=args.timeout,
            publish_timeout=args.timeout,
        )
    except ConfigurationError as exc:
        raise CliError(f"--to: {exc}", 2) from exc
    return sink, f"{url.scheme}://{url.hostname}:{port}/{topic}"


def run(args: argparse.Namespace) -> int:
    """Replay the file."""
    if args.timeout <= 0:
        raise CliError("--timeout must be > 0", 2)
    if args.retries < 0:
        raise CliError("--retries must be >= 0", 2)
    sink, where = target_sink(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReaderWarning)
        try:
            report = asyncio.run(
                replay_dead_letters(
                    args.file,
                    sink,
                    from_sinks=args.from_sink,
                    all_sinks=args.all_sinks,
                    keep=args.keep,
                    timeout=args.timeout,
                    retries=args.retries,
                )
            )
        except FileNotFoundError:
            raise CliError(f"{args.file}: no such file") from None
        except IsADirectoryError:
            raise CliError(f"{args.file}: is a directory, not a dead-letter file") from None
        except BlockingIOError as exc:
            raise CliError(str(exc.strerror or exc)) from None
        except PermissionError as exc:
            raise CliError(
                f"{exc.filename or args.file}: permission denied (--keep replays without "
                "changing the file)"
            ) from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            # The dead-letter file (or its working copy) is a symlink: refused, not followed.
            raise CliError(f"{exc.filename or args.file}: {exc.strerror}") from None
    for warning in caught[:20]:
        warn(str(warning.message))
    if len(caught) > 20:
        warn(f"{args.file}: {len(caught) - 20} more invalid lines not shown")
    if report.resumed:
        warn(f"took up an interrupted replay of {args.file}")
    if report.resent + report.failed + report.other + report.invalid == 0:
        warn(f"{args.file}: no dead letters in it")
    if not report.ok and report.incidents:
        warn(report.incidents[0])  # e.g. why the broker could not be reached
    print(str(report).replace(f"sink {sink.name!r}", where, 1), file=sys.stdout, flush=True)
    return 0 if report.ok else 1
