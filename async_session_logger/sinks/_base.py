"""The sink contract: ``open()``, ``write_batch(batch)``, ``close()``; policy lives in the lane."""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from itertools import chain
from typing import Any, Literal, overload

import orjson

from .._errors import ConfigurationError, SinkError
from .._validate import resolve_level

__all__ = ["Batch", "PartialWriteError", "Sink"]

_LIFECYCLE = frozenset(("session_start", "session_close", "gap"))
# A deferred batch's kinds(per_entry): its distinct events, with its distinct session ids (a
# set), or with each entry's session id in order (a list) when per_entry.
Kinds = Callable[[bool], tuple[Collection[Any], set[Any]]]


class Batch(Sequence[dict[str, Any]]):
    """Entries handed to a sink at once: the dicts, and their JSON Lines encoding in one buffer.

    ``data`` holds one line per entry, each ending with ``\\n``; a sink that writes bytes should
    write ``data`` as it is (one write per batch). The writer encodes ``data`` straight from its
    records and builds the dicts only when a sink first asks for them (``entries``, indexing,
    iteration): a file sink that writes ``data`` never pays for them.
    """

    __slots__ = (
        "_build",
        "_entries",
        "_head_list",
        "_heads",
        "_kinds",
        "_lines",
        "_size",
        "data",
    )

    def __init__(self, entries: list[dict[str, Any]], data: bytes) -> None:
        self._entries: list[dict[str, Any]] | None = entries
        self._build: Callable[[], list[dict[str, Any]]] | None = None
        self._heads: Callable[[], list[tuple[Any, Any, Any]]] | None = None
        self._head_list: list[tuple[Any, Any, Any]] | None = None
        self._kinds: Kinds | None = None
        self._size = len(entries)
        self.data = data
        self._lines: list[bytes] | None = None

    @classmethod
    def deferred(
        cls,
        build: Callable[[], list[dict[str, Any]]],
        size: int,
        data: bytes,
        heads: Callable[[], list[tuple[Any, Any, Any]]] | None = None,
        kinds: Kinds | None = None,
    ) -> Batch:
        """A batch of ``size`` entries whose dicts ``build()`` makes on first use;
        ``heads()``, if given, returns each entry's ``(session_id, event, levelno)`` without
        them, and ``kinds(per_entry)`` the batch's distinct events with its distinct session
        ids (a set), or with each entry's (a list) if ``per_entry``."""
        batch = cls.__new__(cls)
        batch._entries = None
        batch._build = build
        batch._heads = heads
        batch._head_list = None
        batch._kinds = kinds
        batch._size = size
        batch.data = data
        batch._lines = None
        return batch

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The entry dicts, in order (built at the first call for a deferred batch)."""
        entries = self._entries
        if entries is None:
            assert self._build is not None
            entries = self._entries = self._build()
            self._build = None
        return entries

    def heads(self) -> list[tuple[Any, Any, Any]]:
        """Return each entry's ``(session_id, event, levelno)``, in order, without building the
        dicts when they are not built yet (what routing and level filters need). Made once:
        a level filter, the MQTT planner and its retries all read the same list."""
        if self._entries is None and self._heads is not None:
            if self._head_list is None:
                self._head_list = self._heads()
            return self._head_list
        return [(e.get("session_id"), e.get("event"), e.get("levelno")) for e in self.entries]

    def sessions_and_events(self) -> tuple[set[Any], set[Any]]:
        """Return the batch's distinct session ids and events.

        Without a tuple per entry when the batch can say so from its records: what the MQTT
        planner asks of every batch (the usual one is log entries of one session), and
        ``heads()`` would keep a tuple per entry alive as long as the batch, which a sink
        that holds batches until the broker acknowledges them pays for in garbage collections.
        Raises ``TypeError`` for a formatter's unhashable session id.
        """
        ids, events = self._kinds_of(False)
        return (ids if isinstance(ids, set) else set(ids)), events

    def session_ids(self) -> list[Any]:
        """Return each entry's session id, in order: from the records for the writer's
        batches (no tuple per entry), else from :meth:`heads`."""
        ids = self._kinds_of(True)[0]
        return ids if isinstance(ids, list) else list(ids)

    def _kinds_of(self, per_entry: bool) -> tuple[Collection[Any], set[Any]]:
        if self._entries is None and self._kinds is not None:
            return self._kinds(per_entry)
        heads = self.heads()
        ids = (head[0] for head in heads)
        return (list(ids) if per_entry else set(ids)), {head[1] for head in heads}

    def entry(self, index: int) -> dict[str, Any]:
        """Return the entry at ``index``: its dict if built, else its line decoded (the same
        content, in JSON's types: what a sink that publishes it would write)."""
        if self._entries is None:
            decoded: dict[str, Any] = orjson.loads(self.lines()[index])
            return decoded
        return self._entries[index]

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        return self.entries[index]

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries)

    def __repr__(self) -> str:
        return f"<Batch of {self._size} entries, {len(self.data)} bytes>"

    def lines(self) -> list[bytes]:
        """Return the JSON line of each entry (without the newline), in order."""
        if self._lines is None:
            # JSON encoders escape newlines inside strings, so LF only ever ends a line.
            self._lines = self.data.split(b"\n")[:-1]
        return self._lines

    def select(self, indices: Sequence[int]) -> Batch:
        """Return a batch of the entries at ``indices`` (in that order)."""
        lines = self.lines()
        picked = [lines[i] for i in indices]
        picked.append(b"")
        chosen = list(indices)

        def heads() -> list[tuple[Any, Any, Any]]:
            mine = self.heads()
            return [mine[i] for i in chosen]

        return Batch.deferred(
            lambda: [self.entries[i] for i in chosen], len(chosen), b"\n".join(picked), heads
        )

    def at_least(self, levelno: int) -> Batch:
        """Return the entries at or above ``levelno``, keeping every lifecycle entry."""
        keep = [
            i
            for i, (_, event, level) in enumerate(self.heads())
            if (level or 0) >= levelno or event in _LIFECYCLE
        ]
        return self if len(keep) == self._size else self.select(keep)

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Join batches into one, in order."""
        if len(batches) == 1:
            return batches[0]
        parts = list(batches)
        return Batch.deferred(
            lambda: [entry for batch in parts for entry in batch.entries],
            sum(batch._size for batch in parts),
            b"".join(batch.data for batch in parts),
            lambda: list(chain.from_iterable(batch.heads() for batch in parts)),
            lambda per_entry: _joined_kinds(parts, per_entry),
        )


def _joined_kinds(parts: list[Batch], per_entry: bool) -> tuple[Collection[Any], set[Any]]:
    kinds = [batch._kinds_of(per_entry) for batch in parts]
    events: set[Any] = set().union(*(more for _, more in kinds))
    if per_entry:
        return list(chain.from_iterable(ids for ids, _ in kinds)), events
    return set().union(*(ids for ids, _ in kinds)), events


class PartialWriteError(Exception):
    """Raised by a sink when only some entries of a batch failed; the lane retries just those.

    Args:
        failed: indices (into the batch) of the entries that were not delivered.
        cause: the first underlying error.
    """

    def __init__(self, failed: Sequence[int], cause: BaseException) -> None:
        super().__init__(f"{len(failed)} entries failed: {type(cause).__name__}: {cause}")
        self.failed = list(failed)
        self.cause = cause


Overflow = Literal["block", "dead_letter"]


class Sink(abc.ABC):
    """Base class of every sink: it does I/O only; filtering, retries and stats are the lane's.

    Calls to one sink are never concurrent and arrive in order.

    Args:
        name: the sink's name in stats, reports and dead letters (default: the class's).
        min_level: entries below this level are not sent to this sink (lifecycle entries are).
        timeout: seconds one ``write_batch`` may take before it counts as failed (None: no limit).
        retries: how many times a failed batch is retried, with exponential backoff.
        max_pending: entries this sink may have waiting before its overflow policy applies.
        overflow: ``"block"`` makes the logger wait for this sink (nothing is dropped, callers
            slow down); ``"dead_letter"`` moves the oldest waiting entries to the dead-letter file.
        max_batch: most entries handed to one ``write_batch`` when several batches wait (the
            lane merges them); a failed call is retried whole, so network sinks keep it small,
            and ``timeout`` applies to the whole call: a sink that takes 1 ms per entry needs
            ``max_batch * 0.001 < timeout`` (default 10,000 entries, 30 s).
    """

    default_name = "sink"
    default_overflow: Overflow = "block"
    default_timeout: float | None = 30.0
    # 10,000: a sink doing 1,000 entries/s still finishes a merged batch within the timeout.
    default_max_batch = 10_000

    def __init__(
        self,
        *,
        name: str | None = None,
        min_level: int | str = logging.NOTSET,
        timeout: float | None = None,
        retries: int = 3,
        max_pending: int = 50_000,
        overflow: Overflow | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.name = name or self.default_name
        self.min_level = resolve_level(min_level)
        self.timeout = self.default_timeout if timeout is None else timeout
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0, got {self.timeout}")
        if retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {retries}")
        self.retries = retries
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self.max_batch = max_batch or self.default_max_batch
        if self.max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {self.max_batch}")
        self.overflow: Overflow = overflow or self.default_overflow
        if self.overflow not in ("block", "dead_letter"):
            raise ConfigurationError(
                f"overflow must be 'block' or 'dead_letter', got {self.overflow!r}"
            )

    def attach(
        self,
        report: Callable[[SinkError], None],
        dead_letter: Callable[[Batch, str], Awaitable[bool]] | None = None,
    ) -> None:
        """Receive the lane's incident reporter and dead-letter writer (before ``open()``)."""
        self._reporter = report
        self._dead_letterer = dead_letter

    async def dead_letter(self, batch: Batch, reason: str) -> bool:
        """Give up on entries this sink accepted in an earlier ``write_batch``.

        For sinks that keep entries after ``write_batch`` returned (SmtpSink's digests): the
        entries go to the dead-letter file, and the lane moves them from ``delivered`` to
        ``dead_lettered`` (``lost`` if the file could not keep them). Returns whether it kept
        them; False when the sink runs without a logger.
        """
        writer = getattr(self, "_dead_letterer", None)
        return False if writer is None else await writer(batch, reason)

    def report(self, error: SinkError) -> None:
        """Report an incident the sink noticed by itself (e.g. a lost connection).

        Reported once per incident by the sink; it reaches ``on_error`` (default: stderr).
        """
        reporter = getattr(self, "_reporter", None)
        if reporter is not None:
            reporter(error)

    @property
    def healthy(self) -> bool:
        """Whether the sink can deliver now (connected, for network sinks)."""
        return True

    def stats(self) -> dict[str, Any]:
        """Sink-specific counters, added to the logger's stats (default: none)."""
        return {}

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources; an exception here fails the logger's start-up in the caller."""

    @abc.abstractmethod
    async def write_batch(self, batch: Batch) -> None:
        """Deliver every entry of ``batch`` or raise (``PartialWriteError`` for a subset)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called after the last ``write_batch`` of a binding."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget loop-bound and connection state without I/O, before ``open()`` is called again.

        The logger calls it when it moves to a new event loop (the one it ran on closed) and in
        a forked child (whose connections and threads are the parent's). A sink with asyncio
        primitives, tasks, threads or connections makes them anew here; file descriptors a
        forked child inherited may be closed (that does not affect the parent).
        """

    def owns_current_thread(self) -> bool:
        """Whether the caller runs in a thread of this sink (a plain custom handler's)."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
