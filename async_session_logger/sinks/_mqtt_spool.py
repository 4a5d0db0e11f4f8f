"""A bounded, crash-safe, append-only disk spool of MQTT publishes for ``MqttSink``.

File layout (one file; every line ends with ``\\n``)::

    ASL-MQTT-SPOOL 1 acked=00000000000000000123 {"host": ..., "port": ..., "topic": ...}
    <crc32 hex, 8 chars> {"t": topic, "p": payload, "r": retain, "q": qos, "e": entries}
    ...

The header names the sink configuration that wrote the spool, so one written for another broker
or topic template is refused rather than delivered to the wrong place. ``acked`` (fixed width,
rewritten in place) is the offset of the first record the broker has not acknowledged: a crash
mid-drain re-sends at most the records after it. Records are appended and fsync'd one write per
batch; a record cut short by a crash (no newline, or a CRC that does not match) is cut off at
open and counted. Everything here is blocking: the sink runs it in a thread.
"""

from __future__ import annotations

import fcntl
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from .._errors import ConfigurationError
from ._mqtt_payload import Message

__all__ = ["Spool", "SpoolRecord"]

_MAGIC: Final = b"ASL-MQTT-SPOOL 1 acked="
_ACK_WIDTH: Final = 20
_ACK_AT: Final = len(_MAGIC)
_READ_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled publish and the file offset just past it."""

    message: Message
    end: int


def _encode(message: Message) -> bytes:
    body = orjson.dumps(
        {
            "t": message.topic,
            "p": message.payload.decode("utf-8", "surrogateescape"),
            "r": message.retain,
            "q": message.qos,
            "e": message.entries,
        }
    )
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> Message | None:
    """Return the message of a complete record line (without newline), or None if damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        raw: dict[str, Any] = orjson.loads(body)
        if not isinstance(raw["t"], str) or raw["q"] not in (None, 0, 1, 2):
            return None
        return Message(
            raw["t"],
            raw["p"].encode("utf-8", "surrogateescape"),
            bool(raw["r"]),
            raw["q"],
            int(raw["e"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class Spool:
    """The spool file: open (scan, cut a torn tail), append, read from the ack, acknowledge."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, identity: dict[str, Any]):
        if max_bytes < 4096:
            raise ConfigurationError(f"spool_max_bytes must be >= 4096, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.identity = identity
        self._fd: int | None = None
        self.header_len = 0
        self.acked = 0
        self.size = 0
        self.records = 0  # unacknowledged records
        self.entries = 0  # log entries they carry
        self.torn_records = 0
        self.corrupt_records = 0

    # -- open -------------------------------------------------------------------------------
    def open(self) -> None:
        """Open or create the spool, refusing a symlink, a non-file, a foreign or alien file."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            # O_NOFOLLOW: a symlink planted at the path is never written through; O_NONBLOCK:
            # a FIFO planted there cannot hang the open.
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise ConfigurationError(
                f"spool_path {str(self.path)!r} cannot be opened (a symlink is refused): {exc}"
            ) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigurationError(f"spool_path {str(self.path)!r} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigurationError(
                    f"spool {str(self.path)!r} is in use by another sink or process"
                ) from None
            self._fd = fd
            self._load()
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _header(self, acked: int) -> bytes:
        return b"%s%0*d %s\n" % (_MAGIC, _ACK_WIDTH, acked, orjson.dumps(self.identity))

    def _load(self) -> None:
        fd = self._require()
        size = os.fstat(fd).st_size
        if size == 0:
            # New (or created by a process that died before its header was written).
            self.header_len = len(self._header(0))
            os.pwrite(fd, self._header(self.header_len), 0)
            os.fsync(fd)
            self.acked = self.size = self.header_len
            return
        first = os.pread(fd, 64 * 1024, 0).split(b"\n", 1)[0]
        if not first.startswith(_MAGIC) or len(first) < _ACK_AT + _ACK_WIDTH + 2:
            raise ConfigurationError(
                f"{str(self.path)!r} is not an MQTT spool of this library: refusing to touch it"
            )
        try:
            acked = int(first[_ACK_AT : _ACK_AT + _ACK_WIDTH])
            identity = orjson.loads(first[_ACK_AT + _ACK_WIDTH + 1 :])
        except ValueError:
            raise ConfigurationError(f"spool {str(self.path)!r} has a damaged header") from None
        if identity != self.identity:
            raise ConfigurationError(
                f"spool {str(self.path)!r} was written by a sink for {identity}, not for "
                f"{self.identity}: its entries would go to the wrong place; deliver or move it "
                "and point spool_path elsewhere"
            )
        self.header_len = len(first) + 1
        # Past the end: a crash between emptying the file and rewriting the ack.
        self.acked = self.header_len if acked > size or acked < self.header_len else acked
        self._scan(size)

    def _scan(self, size: int) -> None:
        """Count the unacknowledged records; cut off a torn last record."""
        fd = self._require()
        offset = self.acked
        pending = b""
        good_end = offset
        while offset < size:
            chunk = os.pread(fd, _READ_CHUNK, offset)
            if not chunk:
                break
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = _decode(line)
                if message is None:
                    self.corrupt_records += 1
                else:
                    self.records += 1
                    self.entries += message.entries
                good_end += len(line) + 1
        if pending:
            # No newline: the write a crash interrupted. Cut it off so appends start clean.
            self.torn_records += 1
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        self.size = good_end
        if self.records == 0 and self.size > self.header_len:
            self._reset()

    def _require(self) -> int:
        if self._fd is None:
            raise RuntimeError("spool is not open")
        return self._fd

    # -- use --------------------------------------------------------------------------------
    def append(self, messages: list[Message]) -> int:
        """Append messages in order, as many as fit the bound, fsync'd; return how many."""
        fd = self._require()
        data = bytearray()
        taken = 0
        entries = 0
        for message in messages:
            line = _encode(message)
            if self.size + len(data) + len(line) > self.max_bytes:
                break  # in order: nothing after a message that did not fit goes in
            data += line
            taken += 1
            entries += message.entries
        if data:
            os.pwrite(fd, data, self.size)
            # fsync per batch: a spooled entry counts as delivered to the logger, so it must
            # survive a power loss or kernel crash, not just a SIGKILL of this process.
            os.fsync(fd)
            self.size += len(data)
            self.records += taken
            self.entries += entries
        return taken

    def read(self, max_records: int) -> list[SpoolRecord]:
        """Return up to ``max_records`` unacknowledged records in order (damaged ones skipped)."""
        fd = self._require()
        out: list[SpoolRecord] = []
        offset = self.acked
        while offset < self.size and len(out) < max_records:
            chunk = os.pread(fd, min(_READ_CHUNK, self.size - offset), offset)
            if not chunk:
                break
            lines = chunk.split(b"\n")
            if len(lines) == 1:  # one record larger than the chunk: read it whole
                end = self.size - offset
                lines = os.pread(fd, end, offset).split(b"\n")
            for line in lines[:-1]:
                offset += len(line) + 1
                message = _decode(line)
                if message is not None:
                    out.append(SpoolRecord(message, offset))
                    if len(out) >= max_records:
                        break
        return out

    def ack(self, records: list[SpoolRecord]) -> None:
        """Mark records (read in order from the ack) as acknowledged; empty the file when done."""
        if not records:
            return
        fd = self._require()
        self.records -= len(records)
        self.entries -= sum(r.message.entries for r in records)
        self.acked = records[-1].end
        # No good record left (at most damaged ones after the last): start the file afresh.
        if self.acked >= self.size or self.records == 0:
            self._reset()
            return
        # 20 digits rewritten in place: one small write within the first block, fsync'd.
        os.pwrite(fd, b"%0*d" % (_ACK_WIDTH, self.acked), _ACK_AT)
        os.fsync(fd)

    def _reset(self) -> None:
        fd = self._require()
        # Truncate first: a crash before the ack is rewritten leaves acked > size, read as empty.
        os.ftruncate(fd, self.header_len)
        os.pwrite(fd, b"%0*d" % (_ACK_WIDTH, self.header_len), _ACK_AT)
        os.fsync(fd)
        self.size = self.acked = self.header_len
        self.records = self.entries = 0

    def close(self) -> None:
        """Close the file (its lock goes with it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def forget(self) -> None:
        """Drop the descriptor without I/O (a forked child: the parent keeps the file)."""
        self._fd = None

    @property
    def bytes(self) -> int:
        """Bytes of unacknowledged records."""
        return self.size - self.acked
