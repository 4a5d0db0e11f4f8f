"""``collect``: subscribe to a broker and keep what many publishers send, each entry once.

The subscriber uses QoS 1 and a persistent session (``clean_session=False`` under a fixed client
id), so the broker queues messages while the collector is away or reconnecting. It reconnects
with backoff using a fresh client per attempt and subscribes again every time (a broker restarted
without persistence forgot the subscription; mosquitto 2.0.11 forgets shared subscriptions even
with persistence). With ``--group NAME`` it subscribes through the shared subscription
``$share/NAME/<filter>``: the broker hands each message to one member of the group.

Messages are acknowledged (PUBACK) only after their entries are committed: written under the
file's lock and ``fdatasync``'d (see :mod:`._acks`, :class:`._store.Store`). Entries are
deduplicated on ``(session_id, seq)`` within each run of a session id (publishers re-send after
reconnects: at-least-once; an id may be used again after its session closed), see
:mod:`._dedup` for the rule and the memory bound; before each append a collector also reads what
other collectors appended to the file, so dedup holds across a group sharing ``DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import random
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from .._errors import InvalidSessionIdError
from .._reader import entry_problem
from .._validate import check_session_id
from ..store import SqliteStore, StoreError, sqlite_path
from ._acks import ack, enable_manual_acks
from ._common import CliError, note, warn
from ._dedup import Seen, Tracker
from ._from_store import shown_url
from ._mqtt import add_auth_options, password, tls_context
from ._render import plural
from ._store import MAX_UNWRITTEN, Store

if TYPE_CHECKING:
    import aiomqtt

__all__ = ["add_parser", "run"]

_RETRY_EVERY = 0.2
_BACKOFF_INITIAL = 0.2
_WARN_LIMIT = 10
# A group name is one topic level of "$share/NAME/...".
_GROUP = re.compile(r"[^/+#\s\x00-\x1f\x7f]{1,64}")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command."""
    parser = commands.add_parser(
        "collect",
        help="subscribe to an MQTT broker and write the session logs it carries",
        description="Subscribe to MQTT topics where MqttSink publishes, and append every "
        "entry once to JSON Lines files under DIR, one per session or per day. Survives "
        "broker restarts (persistent session, reconnect with backoff). A message is "
        "acknowledged only once its entries are written and synced to disk. Stop with Ctrl-C "
        "or SIGTERM: what was received is written, exit status 0.",
    )
    parser.add_argument("--host", default="localhost", help="broker host (default localhost)")
    parser.add_argument("--port", type=int, default=None, help="broker port (1883, TLS 8883)")
    parser.add_argument(
        "--topic",
        action="append",
        metavar="FILTER",
        help="topic filter to subscribe to (repeat for several; default logs/#)",
    )
    parser.add_argument("--out", metavar="DIR", help="directory for the files")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="write to a session store instead of files: sqlite:///PATH (created if missing) "
        "or postgresql://USER@HOST[:PORT]/DB (schema created if missing)",
    )
    parser.add_argument(
        "--per",
        choices=("session", "day"),
        default="session",
        help="one file per session (DIR/ID.jsonl, default) or per UTC day (DIR/YYYY-MM-DD.jsonl)",
    )
    parser.add_argument(
        "--client-id",
        metavar="ID",
        help="MQTT client id; the broker keeps the session under it (default: from the host "
        "name and DIR, the same on every run)",
    )
    parser.add_argument(
        "--group",
        metavar="NAME",
        help="share the stream with every collector of group NAME (MQTT shared subscription "
        "$share/NAME/FILTER): the broker hands each message to one of them; they may share "
        "DIR. Give each its own --client-id",
    )
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="default 1")
    parser.add_argument("--keepalive", type=int, default=30, metavar="SECONDS")
    parser.add_argument(
        "--reconnect-max",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest pause between reconnection attempts (default 30)",
    )
    parser.add_argument(
        "--forget-after",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="forget the seqs of a session idle this long (default 3600; reloaded from its "
        "file if it comes back)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=100_000,
        metavar="N",
        help="most sessions whose seqs are kept in memory (default 100000)",
    )
    add_auth_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Collect until SIGINT or SIGTERM."""
    if args.reconnect_max <= 0 or args.forget_after <= 0 or args.max_sessions < 1:
        raise CliError("--reconnect-max, --forget-after and --max-sessions must be positive", 2)
    if args.group is not None and not _GROUP.fullmatch(args.group):
        raise CliError(
            f"--group {args.group!r}: 1 to 64 characters, none of '/', '+', '#', spaces or "
            "control characters",
            2,
        )
    if (args.out is None) == (args.store is None):
        raise CliError("give one of --out DIR and --store URL", 2)
    if args.store is not None and not args.store.startswith(
        ("sqlite:///", "postgresql://", "postgres://")
    ):
        raise CliError(
            f"--store {shown_url(args.store)!r}: collect writes to sqlite:///PATH or "
            "postgresql://... stores",
            2,
        )
    try:
        import aiomqtt  # noqa: F401 - checked here for a clear message
    except ImportError:
        raise CliError("collect needs aiomqtt: pip install 'async-session-logger[mqtt]'") from None
    if args.out is not None:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as exc:
            raise CliError(f"--out {args.out}: {exc.strerror or exc}") from None
    collector = Collector(args)
    return asyncio.run(collector.run())


# One entry received and not yet committed: its file, session id, seq, entry and exact line.
_Item = tuple[str, str, int, dict[str, Any], bytes]


class Collector:
    """The subscription loop, the message handler, the commits, the acks and the counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topics: list[str] = args.topic or ["logs/#"]
        group: str | None = args.group
        # A shared subscription: the broker hands each message to one member of the group.
        self.filters = [f"$share/{group}/{t}" for t in self.topics] if group else self.topics
        self.tls = tls_context(args)
        self.port: int = args.port or (8883 if self.tls else 1883)
        self.password = password(args)
        # What is printed (and names the default client id): a URL's password masked.
        self.target: str = args.out if args.out is not None else shown_url(args.store)
        self.client_id: str = args.client_id or _default_client_id(self.target, group)
        # Files under --out, or a store database (--store): opened in the commit thread.
        self.store = Store(args.out, args.per) if args.out is not None else None
        self.db: SqliteStore | None = None
        # One thread for every commit: sqlite3 connections stay in the thread that made them,
        # and the tracker is used by the commits only.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="asl-collect-commit")
        self.tracker = Tracker(
            self._load,
            max_sessions=args.max_sessions,
            forget_after=args.forget_after,
        )
        self.counts = dict.fromkeys(
            ("messages", "written", "duplicates", "statuses", "other", "rejected"), 0
        )
        # Received entries waiting for the next commit; entries a failed commit did not decide.
        self.batch: list[_Item] = []
        self.retry: list[_Item] = []
        # Messages to acknowledge (client, mid, qos), in the order received: those received
        # since the last commit began, and those of commits not yet clean (the disk refused).
        self.received: list[tuple[aiomqtt.Client, int, int]] = []
        self.unacked: list[tuple[aiomqtt.Client, int, int]] = []
        self.acked = 0
        self.db_failing = False
        self.commit_lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.closing = False
        self.stop = asyncio.Event()
        # aiomqtt's client logs on its own logger; the collector reports for itself.
        self.mqtt_logger = logging.getLogger("async_session_logger.collect.mqtt")
        self.mqtt_logger.propagate = False
        if not self.mqtt_logger.handlers:
            self.mqtt_logger.addHandler(logging.NullHandler())

    # -- loop -------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            if self.args.store is not None:
                await loop.run_in_executor(self.executor, self._open_db)
            committer = loop.create_task(
                self._commit_often(), name="async_session_logger.collect.commit"
            )
            try:
                await self._connect_loop()
            finally:
                # Not cancelled: a commit running in its thread must finish before the last.
                self.closing = True
                self.wake.set()
                await asyncio.gather(committer, return_exceptions=True)
                await self._commit()  # what a lost connection left: the broker re-sends it
        finally:
            await loop.run_in_executor(self.executor, self._close_outputs)
            self.executor.shutdown()
        c = self.counts
        # The store's unique key drops duplicates inside the transaction, uncounted.
        dropped = (
            "duplicates dropped by the store"
            if self.store is None
            else f"{plural(c['duplicates'], 'duplicate', 'duplicates')} dropped"
        )
        verb = "written" if self.store is not None else "committed"
        note(
            f"stopped: {plural(c['written'], 'entry', 'entries')} {verb} to {self.target} "
            f"({dropped}, "
            f"{c['statuses']} status and {c['other']} other messages ignored, "
            f"{plural(c['rejected'], 'line', 'lines')} rejected)"
        )
        # Entries a failed commit did not even decide on count too (unacknowledged: the broker
        # sends them again to the next run).
        unwritten = self._pending_bytes() + sum(len(item[4]) + 1 for item in self.retry)
        if unwritten:
            raise CliError(f"{unwritten} bytes could not be written")
        return 0

    async def _connect_loop(self) -> None:
        import aiomqtt

        where = f"{self.args.host}:{self.port}"
        attempt = 0
        incident = False
        connected_before = False
        while not self.stop.is_set():
            client = aiomqtt.Client(
                self.args.host,
                self.port,
                identifier=self.client_id,
                clean_session=False,
                username=self.args.username,
                password=self.password,
                tls_context=self.tls,
                keepalive=self.args.keepalive,
                timeout=10,
                logger=self.mqtt_logger,
            )
            enable_manual_acks(client)
            try:
                await client.__aenter__()
                # Every connection: a broker may have forgotten the subscription (restarted
                # without persistence; mosquitto 2.0.11 never restores shared ones).
                for topic in self.filters:
                    await client.subscribe(topic, qos=self.args.qos)
            except aiomqtt.MqttError as exc:
                await asyncio.gather(client.__aexit__(None, None, None), return_exceptions=True)
                fatal = _fatal(exc)
                if fatal is not None:
                    raise CliError(f"{where}: {fatal}") from None
                if not incident:
                    warn(f"cannot reach {where} ({exc}); retrying with backoff")
                    incident = True
                attempt += 1
                await self._pause(attempt)
                continue
            again = " again" if connected_before else ""
            note(f"subscribed{again} to {', '.join(self.filters)} on {where} as {self.client_id}")
            connected_before, incident, attempt = True, False, 0
            lost = await self._consume(client)
            if lost is not None and not self.stop.is_set():
                warn(f"lost the connection to {where} ({lost}); reconnecting")
                incident = True
                attempt = 1
                await self._pause(attempt)

    async def _consume(self, client: aiomqtt.Client) -> str | None:
        """Handle messages until the connection drops (return why) or a stop (return None)."""
        import aiomqtt

        async def read() -> None:
            async for message in client.messages:
                self.handle(message.topic.value, message.payload)
                if message.qos:
                    self.received.append((client, message.mid, message.qos))
                self.wake.set()

        reader = asyncio.ensure_future(read())
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        try:
            if not reader.done():
                # A stop: take no more messages, commit and acknowledge those received while
                # the connection is still up, then disconnect. What the client had queued but
                # not handed over is not acknowledged: the broker sends it again.
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await self._commit()
                return None
            await reader
        except aiomqtt.MqttError as exc:
            return None if self.stop.is_set() else str(exc.__cause__ or exc)
        finally:
            await asyncio.gather(client.__aexit__(None, None, None), return_exceptions=True)
        return None

    async def _pause(self, attempt: int) -> None:
        delay = min(self.args.reconnect_max, _BACKOFF_INITIAL * 2 ** (attempt - 1))
        try:
            await asyncio.wait_for(self.stop.wait(), delay * random.uniform(0.5, 1.0))
        except TimeoutError:
            pass

    # -- commits and acks -------------------------------------------------------------------
    async def _commit_often(self) -> None:
        """Commit as soon as entries arrive: what arrives during a commit makes the next one."""
        while not self.closing:
            await self.wake.wait()
            self.wake.clear()
            if self.closing:
                return
            await self._commit()
            if not self._clean():
                if self._pending_bytes() > MAX_UNWRITTEN:
                    warn(f"{self._pending_bytes()} bytes could not be written; stopping")
                    self.stop.set()
                    return
                # The disk refused: try again a little later (no acks meanwhile, so the broker
                # stops sending once its in-flight window is full). A plain sleep, also after a
                # stop: the last commits must not spin on a failing disk.
                await asyncio.sleep(_RETRY_EVERY)
                self.wake.set()

    async def _commit(self) -> None:
        """Write and sync what was received, then acknowledge its messages (in order)."""
        async with self.commit_lock:
            batch, self.batch = self.batch, []
            self.unacked += self.received
            self.received = []
            if batch or not self._clean():
                # Off the event loop: fdatasync takes milliseconds, and the MQTT client runs on
                # this loop (keepalives, incoming messages).
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self.executor, self._write, batch)
            if self._clean():
                for client, mid, qos in self.unacked:
                    ack(client, mid, qos)
                self.acked += len(self.unacked)
                self.unacked = []

    def _clean(self) -> bool:
        """Return whether everything received so far is committed."""
        return not self.retry and (self.store is None or self.store.clean)

    def _pending_bytes(self) -> int:
        return 0 if self.store is None else self.store.pending_bytes

    def _open_db(self) -> None:
        """Open (or create) the store database, in the commit thread."""
        url: str = self.args.store
        try:
            if url.startswith(("postgresql://", "postgres://")):
                # Imported here: asyncpg is the [postgres] extra's. The store commits with the
                # server's synchronous_commit (on by default): acks go out after a durable COMMIT.
                from ..store.postgres import PostgresStore

                self.db = PostgresStore(url)
            else:
                self.db = SqliteStore(sqlite_path(url), synchronous="FULL")
        except ImportError:
            raise CliError(
                "--store postgresql://... needs asyncpg: "
                "pip install 'async-session-logger[postgres]'"
            ) from None
        except (StoreError, OSError, sqlite3.Error) as exc:
            raise CliError(f"--store {self.target}: {exc}") from None

    def _close_outputs(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.db is not None:
            self.db.close()

    def _write(self, batch: list[_Item]) -> None:
        """Commit entries (in the commit thread: the only one using the tracker and the db)."""
        items, self.retry = self.retry + batch, []
        if self.store is None:
            self._write_db(items)
            return
        by_path: dict[str, list[_Item]] = {path: [] for path in self.store.pending}
        for item in items:
            by_path.setdefault(item[0], []).append(item)
        now = time.monotonic()

        def others(found: Iterator[dict[str, Any]], whole: bool) -> None:
            self._others(found, whole, now)

        for path, group in by_path.items():
            decided = False

            def decide(group: list[_Item] = group) -> list[bytes]:
                nonlocal decided
                decided = True
                lines = []
                for _, session_id, seq, entry, line in group:
                    if self.tracker.is_new(session_id, seq, entry, now):
                        lines.append(line)
                    else:
                        self.counts["duplicates"] += 1
                self.counts["written"] += len(lines)
                return lines

            try:
                self.store.commit(path, decide, others)
            except OSError:
                if not decided:
                    self.retry += group

    def _write_db(self, items: list[_Item]) -> None:
        """Insert entries in one transaction; the store's unique key drops duplicates."""
        assert self.db is not None
        if not items:
            return
        try:
            # synchronous=FULL: the commit is on disk (WAL synced) before the acks go out.
            bad = self.db.write([item[4] for item in items])
        except (sqlite3.Error, OSError, StoreError) as exc:
            # StoreError: PostgreSQL refused or the connection broke (reopened by the next try).
            if not self.db_failing:
                warn(f"cannot write {self.target}: {exc}; keeping entries in memory")
            self.db_failing = True
            self.retry = items
            return
        if self.db_failing:
            warn("writing works again")
            self.db_failing = False
        self.counts["written"] += len(items) - len(bad)
        self.counts["rejected"] += len(bad)

    def _others(self, found: Iterator[dict[str, Any]], whole: bool, now: float) -> None:
        """Record entries found in a file: written by another collector, or before this run."""
        if whole:
            self.tracker.preload(
                ((e["session_id"], e["seq"], e.get("event"), e.get("timestamp")) for e in found),
                now,
            )
            return
        for entry in found:
            self.tracker.is_new(entry["session_id"], entry["seq"], entry, now)

    # -- messages ---------------------------------------------------------------------------
    def handle(self, topic: str, payload: Any) -> None:
        """Queue the entries of one message (one entry, or JSON Lines) for the next commit."""
        self.counts["messages"] += 1
        if topic.endswith("/status"):
            # Retained session statuses repeat what the start and close entries say.
            self.counts["statuses"] += 1
            return
        if not isinstance(payload, bytes | bytearray):
            self._reject(topic, "not a JSON entry")
            return
        for line in bytes(payload).split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                self._reject(topic, "not valid JSON")
                continue
            problem = entry_problem(entry)
            if problem is not None:
                if isinstance(entry, dict) and "seq" not in entry and "event" not in entry:
                    self.counts["other"] += 1  # presence and foreign messages
                else:
                    self._reject(topic, problem)
                continue
            session_id: str = entry["session_id"]
            try:
                check_session_id(session_id)
            except InvalidSessionIdError as exc:
                self._reject(topic, str(exc))
                continue
            path = "" if self.store is None else self.store.path_for(session_id, entry)
            self.batch.append((path, session_id, entry["seq"], entry, line))

    def _load(self, session_id: str, entry: dict[str, Any]) -> Iterator[Seen] | None:
        """Read a session's entries back from its file when it is not in memory (per-session
        files): the tracker rebuilds its runs and their seqs from them."""
        if self.store is None or self.args.per != "session":
            return None
        path = self.store.path_for(session_id, entry)
        return (
            (seq, event, timestamp)
            for sid, seq, event, timestamp in self.store.seen(path)
            if sid == session_id
        )

    def _reject(self, topic: str, why: str) -> None:
        self.counts["rejected"] += 1
        if self.counts["rejected"] <= _WARN_LIMIT:
            warn(f"message on {topic!r}: {why}; skipped")
        elif self.counts["rejected"] == _WARN_LIMIT + 1:
            warn("more rejected lines are counted, not shown")


def _default_client_id(out: str, group: str | None) -> str:
    key = os.path.abspath(out) if group is None else f"{os.path.abspath(out)}\0{group}"
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"asl-collect-{socket.gethostname()[:40]}-{digest}"


def _fatal(exc: Exception) -> str | None:
    """Return a message when retrying cannot help (refused credentials, bad certificate)."""
    import aiomqtt

    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS certificate not trusted ({text})"
    if "hostname" in text and "match" in text:
        return f"TLS host name mismatch ({text})"
    if isinstance(exc, aiomqtt.MqttCodeError):
        code = getattr(exc.rc, "value", exc.rc)
        if code in (4, 5, 134, 135):
            return f"the broker refused the connection: {text}"
        if code in (2, 133):
            return f"the broker refused the client id: {text}"
    return None
