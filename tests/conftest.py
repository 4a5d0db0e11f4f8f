"""Shared fixtures: one behaviour suite drives both the sync and the async face."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import AsyncSessionLogger, DeliveryReport, SessionLogger, SinkError

# A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT as
# ignored, and so would every child process: the tests that stop a child with SIGINT (Ctrl-C)
# need Python's default handler, which exec turns back into the default action.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def held(lock: Any) -> bool:
    """Whether some thread holds ``lock``, asked from a new thread (the recorder's lock is an
    RLock: its owner would just take it again, and an RLock has no ``locked()`` before 3.14)."""
    got: list[bool] = []

    def probe() -> None:
        got.append(lock.acquire(blocking=False))
        if got[0]:
            lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(10)
    return not got[0]


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Parse every line of a JSON Lines file (each line must be valid JSON)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


class Face:
    """Drive a logger through one API shape with awaitable verbs, whatever its face."""

    kind: str

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.errors: list[SinkError] = []
        self.options.setdefault("on_error", self.errors.append)

    async def open(self) -> None:
        raise NotImplementedError

    async def start_session(self, session_id: Any, metadata: Any = None) -> None:
        raise NotImplementedError

    async def log_entry(
        self, session_id: Any, message: Any, level: Any = logging.INFO, custom_fields: Any = None
    ) -> None:
        raise NotImplementedError

    async def close_session(self, session_id: Any, status: str = "closed") -> None:
        raise NotImplementedError

    async def save_logs(self) -> DeliveryReport:
        raise NotImplementedError

    async def close(self) -> DeliveryReport:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError


class SyncFace(Face):
    kind = "sync"

    async def open(self) -> None:
        # The facade starts its loop thread in the constructor: keep it off the test's loop.
        self.logger = await asyncio.to_thread(lambda: SessionLogger(**self.options))

    async def start_session(self, session_id: Any, metadata: Any = None) -> None:
        self.logger.start_session(session_id, metadata)

    async def log_entry(
        self, session_id: Any, message: Any, level: Any = logging.INFO, custom_fields: Any = None
    ) -> None:
        self.logger.log_entry(session_id, message, level, custom_fields)

    async def close_session(self, session_id: Any, status: str = "closed") -> None:
        self.logger.close_session(session_id, status)

    async def save_logs(self) -> DeliveryReport:
        return await asyncio.to_thread(self.logger.save_logs)

    async def close(self) -> DeliveryReport:
        return await asyncio.to_thread(self.logger.close)

    def stats(self) -> dict[str, Any]:
        return self.logger.stats()


class AsyncFace(Face):
    kind = "async"

    async def open(self) -> None:
        self.logger = AsyncSessionLogger(**self.options)
        await self.logger.start()

    async def start_session(self, session_id: Any, metadata: Any = None) -> None:
        await self.logger.start_session(session_id, metadata)

    async def log_entry(
        self, session_id: Any, message: Any, level: Any = logging.INFO, custom_fields: Any = None
    ) -> None:
        await self.logger.log_entry(session_id, message, level, custom_fields)

    async def close_session(self, session_id: Any, status: str = "closed") -> None:
        await self.logger.close_session(session_id, status)

    async def save_logs(self) -> DeliveryReport:
        return await self.logger.save_logs()

    async def close(self) -> DeliveryReport:
        return await self.logger.aclose()

    def stats(self) -> dict[str, Any]:
        return self.logger.stats()


class FaceFactory:
    """Build faces of one kind; every face built is closed at teardown."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.built: list[Face] = []

    async def __call__(self, **options: Any) -> Face:
        options.setdefault("dead_letter_path", self.tmp_path / "dead.jsonl")
        if "sinks" not in options and "method" not in options:
            options["method"] = "file"
            options.setdefault("path", self.tmp_path / "log.jsonl")
        face: Face = SyncFace(**options) if self.kind == "sync" else AsyncFace(**options)
        await face.open()
        self.built.append(face)
        return face


SECRET = b"root:secret-hash:19000:0:99999:7:::\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A 0600 file outside the directories under test: what a planted link points at."""
    target = tmp_path / "private" / "shadow"
    target.parent.mkdir()
    target.write_bytes(SECRET)
    target.chmod(0o600)
    return target


@pytest.fixture(params=["sync", "async"])
async def make_logger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FaceFactory]:
    """Yield a factory of loggers of the parametrized face (sync facade or async core)."""
    factory = FaceFactory(request.param, tmp_path)
    yield factory
    for face in factory.built:
        await face.close()


MountFactory = Callable[..., Path]


@dataclass
class HungMount:
    """A real FUSE filesystem (``tests/hangfs.py``) whose chosen operations hang on command."""

    path: Path
    control: Path

    def hang(self, *operations: str) -> None:
        """Make ``operations`` (``"fsync"``, ``"write"``, ``"flush"``: what a close waits
        for) block, as on a hung NFS mount."""
        self.control.write_text(" ".join(operations), encoding="utf-8")

    def release(self) -> None:
        """Let every blocked operation go on."""
        self.control.write_text("", encoding="utf-8")

    def fsyncs(self) -> list[tuple[str, int]]:
        """``(path in the mount, size)`` of each fsync done, in order."""
        log = self.control.with_name(self.control.name + ".fsyncs")
        if not log.exists():
            return []
        return [
            (path, int(size))
            for path, size in (line.rsplit(" ", 1) for line in log.read_text().splitlines())
        ]


@pytest.fixture
def hung_mount(tmp_path: Path) -> Iterator[HungMount]:
    """Mount a FUSE filesystem that passes through to a directory until told to hang."""
    backing, point, control = tmp_path / "hangfs-data", tmp_path / "hangfs", tmp_path / "hangfs-ops"
    backing.mkdir()
    point.mkdir()
    control.write_text("", encoding="utf-8")
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("hangfs.py")), backing, point, control],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while f" {point} fuse" not in Path("/proc/mounts").read_text(encoding="utf-8"):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            _, err = server.communicate()
            raise RuntimeError(f"the FUSE filesystem did not mount: {err.decode()}")
        time.sleep(0.02)
    try:
        yield HungMount(point, control)
    finally:
        control.write_text("", encoding="utf-8")
        # Killed, the server takes its connection with it: the kernel fails any call still
        # blocked in it (ENOTCONN), so no thread of the test stays stuck.
        server.kill()
        server.wait()
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[MountFactory]:
    """Mount real tmpfs filesystems of a given size (we are root); unmounted at teardown."""
    mounts: list[Path] = []

    def mount(name: str = "disk", size: str = "256k") -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True
        )
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        # chattr +i files would survive a plain rm; a lazy unmount drops the whole filesystem.
        subprocess.run(["umount", "-l", str(point)], check=False)
