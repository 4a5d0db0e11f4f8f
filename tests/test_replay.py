"""replay_dead_letters: real dead-letter files re-sent to real sinks, nothing lost on failure."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    ReaderWarning,
    ReplayReport,
    _replay_claim,
    read_dead_letters,
    replay_dead_letters,
)
from async_session_logger._deadletter import DeadLetters
from async_session_logger.sinks import Batch, FileSink, MqttSink, PartialWriteError, Sink

from .conftest import SECRET
from .mqtt_broker import Broker, free_port


def _make_dead_letters(tmp_path: Path, sessions: int = 2, entries: int = 20) -> Path:
    """Log through a file sink whose directory is missing: every entry is dead-lettered."""
    asyncio.run(_log_to_missing_dir(tmp_path, sessions, entries))
    return tmp_path / "dead.jsonl"


async def _log_to_missing_dir(tmp_path: Path, sessions: int, entries: int) -> None:
    dead = tmp_path / "dead.jsonl"
    down = FileSink(tmp_path / "down" / "{session_id}.jsonl", mkdir=False, retries=0)
    ref = FileSink(tmp_path / "reference.jsonl", name="reference")
    async with AsyncSessionLogger(
        sinks=[down, ref], dead_letter_path=dead, on_error=lambda e: None
    ) as alog:
        for s in range(sessions):
            await alog.start_session(f"s{s}", metadata={"n": s})
            for i in range(entries):
                await alog.log_entry(
                    f"s{s}", f"entry {i}", logging.WARNING, {"i": i, "f": 0.1 * i, "u": "é\u2028"}
                )
            await alog.close_session(f"s{s}")
        await alog.save_logs()


def _replay(path: Path, sink: Sink, **options: Any) -> ReplayReport:
    return asyncio.run(replay_dead_letters(path, sink, **options))


def _add_letter(dead: Path, sink_name: str, reason: str, entry: dict[str, Any]) -> bytes:
    """Append one letter with the real dead-letter writer; return the line it wrote."""
    before = dead.stat().st_size if dead.exists() else 0
    data = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    assert asyncio.run(DeadLetters(dead).write(sink_name, reason, Batch([entry], data)))
    return dead.read_bytes()[before:]


def _minimal(seq: int) -> dict[str, Any]:
    """Return the smallest entry a replay accepts: the keys a reader needs."""
    return {"session_id": "late", "seq": seq, "event": "log"}


def _minimal_line(seq: int) -> bytes:
    """Return the line ``_minimal(seq)`` is written as."""
    return json.dumps(_minimal(seq), separators=(",", ":")).encode() + b"\n"


def _reference_lines(tmp_path: Path, session_id: str) -> list[bytes]:
    lines = (tmp_path / "reference.jsonl").read_bytes().splitlines(keepends=True)
    return [line for line in lines if json.loads(line)["session_id"] == session_id]


def test_replay_to_a_file_sink_writes_the_original_lines_and_removes_the_file(
    tmp_path: Path,
) -> None:
    """Letters of a failed FileSink go back to it byte for byte; the emptied file is removed."""
    dead = _make_dead_letters(tmp_path)
    assert len(list(read_dead_letters(dead))) == 2 * 22
    (tmp_path / "down").mkdir()
    report = _replay(dead, FileSink(tmp_path / "down" / "{session_id}.jsonl"))
    assert isinstance(report, ReplayReport)
    assert (report.resent, report.failed, report.other, report.invalid) == (44, 0, 0, 0)
    assert report.ok and report.kept == 0
    for sid in ("s0", "s1"):
        assert (tmp_path / "down" / f"{sid}.jsonl").read_bytes().splitlines(
            keepends=True
        ) == _reference_lines(tmp_path, sid)
    assert not dead.exists()
    assert not Path(f"{dead}.replaying").exists()
    assert "re-sent 44 entries" in str(report)


def test_only_the_sinks_letters_by_default_others_kept_verbatim(tmp_path: Path) -> None:
    """By default only letters of sink.name are re-sent; others stay in the file unchanged."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=3)
    original = dead.read_bytes()
    # Another sink's letter, written by the real dead-letter writer.
    mqtt_line = _add_letter(
        dead, "mqtt", "OSError: gone", {"session_id": "x", "seq": 0, "event": "log"}
    )
    out = tmp_path / "out.jsonl"
    report = _replay(dead, FileSink(out, name="elsewhere"))
    assert (report.resent, report.other) == (0, 6)
    assert dead.read_bytes() == original + mqtt_line
    report = _replay(dead, FileSink(out), from_sinks=["file"])
    assert (report.resent, report.other) == (5, 1)
    assert dead.read_bytes() == mqtt_line
    report = _replay(dead, FileSink(out), all_sinks=True)
    assert (report.resent, report.other) == (1, 0)
    assert not dead.exists()
    assert out.read_bytes() == b"".join(_reference_lines(tmp_path, "s0")) + (
        b'{"session_id":"x","seq":0,"event":"log"}\n'
    )


def test_a_sink_that_cannot_open_keeps_the_file_intact(tmp_path: Path) -> None:
    """The target cannot even open (a directory): every letter stays, report says why."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=5)
    original = dead.read_bytes()
    (tmp_path / "adir").mkdir()
    report = _replay(dead, FileSink(tmp_path / "adir"), retries=0)
    assert (report.resent, report.failed) == (0, 7)
    assert not report.ok
    assert "IsADirectoryError" in (report.error or "")
    assert dead.read_bytes() == original
    assert not Path(f"{dead}.replaying").exists()


class _FlakySink(Sink):
    """Accept ``accept`` entries in total, then fail every call (a sink that went down)."""

    default_name = "file"

    def __init__(self, accept: int, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.accept = accept
        self.got: list[bytes] = []

    async def write_batch(self, batch: Batch) -> None:
        room = max(0, self.accept - len(self.got))
        self.got += batch.lines()[:room]
        if room < len(batch):
            raise PartialWriteError(range(room, len(batch)), OSError("disk on fire"))


def test_partial_failure_keeps_exactly_the_unsent_letters(tmp_path: Path) -> None:
    """A sink that fails half-way: what it took is gone from the file, the rest kept as is."""
    dead = _make_dead_letters(tmp_path, sessions=2, entries=8)
    lines = dead.read_bytes().splitlines(keepends=True)
    sink = _FlakySink(accept=13)
    report = _replay(dead, sink, batch_size=5, retries=1)
    assert (report.resent, report.failed) == (13, 7)
    assert "disk on fire" in (report.error or "")
    entry_lines = [json.dumps(json.loads(line)["entry"]).encode() for line in lines]
    assert [json.dumps(json.loads(g)).encode() for g in sink.got] == entry_lines[:13]
    assert dead.read_bytes().splitlines(keepends=True) == lines[13:]


class _SlowSink(Sink):
    """Take ``delay`` seconds per batch, calling ``during`` once inside the first one."""

    default_name = "file"

    def __init__(self, delay: float, during: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.during = during
        self.entries: list[dict[str, object]] = []

    async def write_batch(self, batch: Batch) -> None:
        if self.during is not None:
            during, self.during = self.during, None
            result = during()
            if asyncio.iscoroutine(result):
                await result
        await asyncio.sleep(self.delay)
        self.entries += batch.entries


def test_letters_written_during_a_replay_are_kept(tmp_path: Path) -> None:
    """A logger dead-lettering while the replay runs: its new letters survive, not replayed."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=4)
    late = {"session_id": "late", "seq": 3, "event": "log"}
    data = b'{"session_id":"late","seq":3,"event":"log"}\n'

    async def append() -> None:
        assert await DeadLetters(dead).write("file", "TimeoutError: slow", Batch([late], data))

    sink = _SlowSink(0.05, during=append)
    report = _replay(dead, sink)
    assert report.resent == 6 and report.ok
    assert [e["session_id"] for e in sink.entries] == ["s0"] * 6
    assert [d["entry"] for d in read_dead_letters(dead)] == [late]


def test_a_second_replay_of_the_same_file_is_refused(tmp_path: Path) -> None:
    """Two replays at once: the second one fails with BlockingIOError, nothing is duplicated."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=4)
    errors: list[BaseException] = []
    second_out = tmp_path / "second.jsonl"

    async def second() -> None:
        try:
            await replay_dead_letters(dead, FileSink(second_out))
        except BlockingIOError as exc:
            errors.append(exc)

    sink = _SlowSink(0.05, during=second)
    report = _replay(dead, sink)
    assert report.resent == 6
    assert len(errors) == 1 and "another replay" in str(errors[0])
    assert not second_out.exists()
    assert not dead.exists()


def test_an_interrupted_replay_is_taken_up_by_the_next_one(tmp_path: Path) -> None:
    """Cancelled half-way: FILE.replaying keeps every letter; the next replay finishes it."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=8)
    original = dead.read_bytes()

    async def interrupted() -> None:
        task = asyncio.create_task(replay_dead_letters(dead, _SlowSink(10), batch_size=2))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    work = Path(f"{dead}.replaying")
    assert work.read_bytes() == original
    assert not dead.exists()
    # A new letter arrives before the next replay.
    _add_letter(dead, "file", "x", _minimal(1))
    out = tmp_path / "out.jsonl"
    report = _replay(dead, FileSink(out))
    assert report.resumed and report.resent == 11 and report.ok
    assert not work.exists() and not dead.exists()
    assert out.read_bytes() == b"".join(_reference_lines(tmp_path, "s0")) + _minimal_line(1)


# A replay that hangs in its sink, to be killed with SIGKILL while it sends.
_STUCK_REPLAY = """
import asyncio, sys
from async_session_logger import replay_dead_letters
from async_session_logger.sinks import Sink

class Stuck(Sink):
    default_name = "file"

    async def write_batch(self, batch):
        print("sending", flush=True)
        await asyncio.sleep(60)

asyncio.run(replay_dead_letters(sys.argv[1], Stuck(), batch_size=2))
"""


def test_a_replay_killed_while_sending_is_resumed_without_repeating_letters(
    tmp_path: Path,
) -> None:
    """SIGKILL mid-send: the next replay sends each letter once, late appends included."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=8)
    late_line = _add_letter(tmp_path / "scratch.jsonl", "file", "x", _minimal(100))
    # A logger that opened the file just before the replay renamed it appends after the rename.
    with open(dead, "ab") as early_writer:
        child = subprocess.Popen(
            [sys.executable, "-c", _STUCK_REPLAY, str(dead)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"sending\n", child.stderr
            early_writer.write(late_line)
            early_writer.flush()
            child.kill()
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert not dead.exists() and Path(f"{dead}.replaying").exists()
    _add_letter(dead, "file", "x", _minimal(101))  # a new letter before the next replay
    out = tmp_path / "out.jsonl"
    report = _replay(dead, FileSink(out))
    assert report.resumed and report.ok and report.resent == 12
    assert out.read_bytes() == b"".join(_reference_lines(tmp_path, "s0")) + (
        _minimal_line(100) + _minimal_line(101)
    )
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "reference.jsonl", "scratch.jsonl"]


def test_a_replay_that_failed_mid_copy_is_resumed_without_repeating_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the file is copied aside: the next replay holds each letter once."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=8)
    real = _replay_claim._write_all

    def disk_full(fd: int, data: bytes) -> None:
        real(fd, data[: len(data) // 2])  # half of the file, cut mid-line
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_replay_claim, "_write_all", disk_full)
    out = tmp_path / "out.jsonl"
    with pytest.raises(OSError, match="No space left"):
        _replay(dead, FileSink(out))
    monkeypatch.setattr(_replay_claim, "_write_all", real)
    assert not dead.exists() and Path(f"{dead}.replaying").stat().st_size > 0
    report = _replay(dead, FileSink(out))
    assert report.resumed and report.ok and (report.resent, report.invalid) == (10, 0)
    assert out.read_bytes() == b"".join(_reference_lines(tmp_path, "s0"))
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "reference.jsonl"]


def test_missing_file_and_keep(tmp_path: Path) -> None:
    """A missing file raises FileNotFoundError and leaves nothing; keep=True changes nothing."""
    with pytest.raises(FileNotFoundError):
        _replay(tmp_path / "nope.jsonl", FileSink(tmp_path / "o.jsonl"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        _replay(tmp_path / "nope.jsonl", FileSink(tmp_path / "o"), keep=True)
    dead = _make_dead_letters(tmp_path, sessions=1, entries=2)
    original = dead.read_bytes()
    report = _replay(dead, FileSink(tmp_path / "o.jsonl"), keep=True)
    assert report.resent == 4 and dead.read_bytes() == original


def test_unreadable_lines_warn_with_their_line_number_and_stay(tmp_path: Path) -> None:
    """Garbage and non-letter lines: a ReaderWarning naming file:line, the line kept."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=1)
    with open(dead, "ab") as fh:
        fh.write(b"not json\n")
        fh.write(b'{"sink": "file"}\n')
        fh.write(b'{"sink":"file","reason":"r","entry":{"seq":9')  # torn last line
    with pytest.warns(ReaderWarning) as caught:
        report = _replay(dead, FileSink(tmp_path / "o.jsonl"))
    messages = [str(w.message) for w in caught]
    assert messages[0].startswith(f"{dead}:4: not valid JSON")
    assert messages[1] == f'{dead}:5: not a dead letter (no "entry" object); kept'
    assert (report.resent, report.invalid) == (3, 3)
    assert dead.read_bytes() == (
        b'not json\n{"sink": "file"}\n{"sink":"file","reason":"r","entry":{"seq":9\n'
    )


def test_replay_mqtt_dead_letters_to_a_real_broker(tmp_path: Path) -> None:
    """Letters of an MqttSink whose broker was down reach a real mosquitto, payloads intact."""
    port = free_port()
    dead = tmp_path / "dead.jsonl"

    async def log_while_down() -> None:
        async with AsyncSessionLogger(
            sinks=[MqttSink("127.0.0.1", port, reconnect_max=0.2)],
            dead_letter_path=dead,
            on_error=lambda e: None,
            close_timeout=0.5,
        ) as alog:
            await alog.start_session("dev-1", metadata={"fw": "1.2"})
            for i in range(30):
                await alog.log_entry("dev-1", f"m{i}", custom_fields={"i": i})
            await alog.close_session("dev-1")

    asyncio.run(log_while_down())
    letters = list(read_dead_letters(dead))
    assert len(letters) == 32 and {d["sink"] for d in letters} == {"mqtt"}
    expected = {line[line.index(b',"entry":') + 9 : -1] for line in dead.read_bytes().splitlines()}
    with Broker(port=port, workdir=tmp_path / "broker") as broker:
        sub = broker.subscriber("logs/#", workdir=tmp_path / "sub").start()
        sink = MqttSink("127.0.0.1", port, logger_topic=None, status=False)
        report = asyncio.run(replay_dead_letters(dead, sink, timeout=10))
        assert report.ok and report.resent == 32
        sub.wait_for_sync(32)
        payloads = [p for t, p in sub.messages() if t == "logs/dev-1"]
        assert set(payloads) == expected and len(payloads) == 32
        sub.close()
    assert not dead.exists()


def test_replay_to_a_dead_broker_times_out_and_keeps_everything(tmp_path: Path) -> None:
    """No broker at all: the replay gives up after its timeout and the file is unchanged."""
    dead = tmp_path / "dead.jsonl"
    _add_letter(dead, "mqtt", "overflow", {"session_id": "a", "seq": 0, "event": "log"})
    original = dead.read_bytes()
    sink = MqttSink("127.0.0.1", free_port(), logger_topic=None, reconnect_max=0.2)
    report = asyncio.run(replay_dead_letters(dead, sink, timeout=0.5, retries=0))
    assert (report.resent, report.failed) == (0, 1)
    assert "timed out" in (report.error or "")
    assert dead.read_bytes() == original


def test_letters_with_no_log_entry_or_an_unsafe_id_are_kept_not_replayed(tmp_path: Path) -> None:
    """An entry `{}` and an id like ../../../x are refused (kept, warned, counted invalid):
    nothing is written outside the target directory, the good letters still go out."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=1)
    empty = _add_letter(dead, "file", "r", {})
    escape = _add_letter(
        dead, "file", "r", {"session_id": "../../../x", "seq": 0, "event": "log", "message": "m"}
    )
    dotdot = _add_letter(dead, "file", "r", {"session_id": "..", "seq": 1, "event": "log"})
    out = tmp_path / "deep" / "er" / "out"
    with pytest.warns(ReaderWarning) as caught:
        report = _replay(dead, FileSink(out / "{session_id}.jsonl"))
    messages = [str(w.message) for w in caught]
    assert messages[0] == (f"{dead}:4: not a log entry (entry lacks session_id, seq, event); kept")
    assert messages[1].startswith(f"{dead}:5: unsafe session id: session id '../../../x'")
    assert messages[2].startswith(f"{dead}:6: unsafe session id: session id must not be '..'")
    assert (report.resent, report.invalid, report.failed) == (3, 3, 0)
    assert "3 invalid lines; 3 kept in" in str(report)
    assert dead.read_bytes() == empty + escape + dotdot
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [name for name in written if not name.startswith("deep/er/out/")] == [
        "dead.jsonl",
        "reference.jsonl",
    ]
    assert [json.loads(line)["seq"] for line in (out / "s0.jsonl").read_bytes().splitlines()] == [
        0,
        1,
        2,
    ]


def test_a_link_planted_as_the_working_copy_is_refused(tmp_path: Path, secret: Path) -> None:
    """dead.jsonl.replaying is a symlink: the replay refuses it (ELOOP), appends nothing to its
    target, and leaves the dead-letter file as it was."""
    dead = _make_dead_letters(tmp_path, sessions=1, entries=2)
    original = dead.read_bytes()
    work = Path(f"{dead}.replaying")
    work.symlink_to(secret)
    with pytest.raises(OSError) as caught:
        _replay(dead, FileSink(tmp_path / "out.jsonl"))
    assert caught.value.errno == errno.ELOOP and caught.value.filename == str(work)
    assert secret.read_bytes() == SECRET and work.is_symlink()
    assert dead.read_bytes() == original
    out = f"file:{tmp_path / 'out.jsonl'}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "async_session_logger",
            "replay-dead-letters",
            str(dead),
            "--to",
            out,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == (
        f"async-session-logger: error: {work}: is a symbolic link or no regular file: "
        "not replayed\n"
    )


def test_a_dead_letter_file_that_is_a_link_is_not_copied_anywhere(
    tmp_path: Path, secret: Path
) -> None:
    """dead.jsonl is a symlink to a 0600 file: refused before anything is renamed or copied,
    so the target's lines never land in a file readable by others."""
    dead = tmp_path / "dead.jsonl"
    dead.symlink_to(secret)
    with pytest.raises(OSError) as caught:
        _replay(dead, FileSink(tmp_path / "out.jsonl"))
    assert caught.value.errno == errno.ELOOP and caught.value.filename == str(dead)
    assert secret.read_bytes() == SECRET and dead.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dead.jsonl", "private"]


def test_letters_put_back_keep_the_files_permissions(tmp_path: Path) -> None:
    """A 0600 dead-letter file whose letters still fail: the file rebuilt at the end is 0600,
    and the working copy was never readable by others."""
    old = os.umask(0o022)
    try:
        dead = _make_dead_letters(tmp_path, sessions=1, entries=2)
        dead.chmod(0o600)
        modes: list[int] = []

        class Refusing(Sink):
            default_name = "file"

            async def write_batch(self, batch: Batch) -> None:
                modes.append(os.stat(f"{dead}.replaying").st_mode & 0o777)
                raise OSError(errno.EIO, "still down")

        report = _replay(dead, Refusing(), retries=0)
    finally:
        os.umask(old)
    assert report.failed == 4 and modes == [0o600]
    assert dead.stat().st_mode & 0o777 == 0o600
    assert len(list(read_dead_letters(dead))) == 4


async def _log_issue12_fields(tmp_path: Path) -> None:
    """Log sessions with every issue-12 field through a file sink that cannot write."""
    down = FileSink(tmp_path / "down" / "{session_id}.jsonl", mkdir=False, retries=0)
    ref = FileSink(tmp_path / "reference.jsonl", name="reference")
    async with AsyncSessionLogger(
        sinks=[down, ref],
        dead_letter_path=tmp_path / "dead.jsonl",
        on_error=lambda e: None,
        buffer_level="DEBUG",
    ) as alog:
        async with alog.session("parent") as parent:
            async with alog.session("child", parent=parent) as child:
                await child.debug("held and discarded")
                await child.info("kept")
                child.annotate(rows=3, api_token="secret", note="é\u2028")
            async with alog.session("failed", parent=parent.token()) as failed:
                await failed.debug("held, then written")
                await failed.info("written at once")
                await failed.error("boom")
        await alog.save_logs()


def test_letters_with_the_issue_12_fields_replay_byte_identical(tmp_path: Path) -> None:
    """Start entries with parent_session_id, close entries with levels, summary and discarded,
    and held entries written late (older timestamps) replay exactly as the file sink wrote."""
    asyncio.run(_log_issue12_fields(tmp_path))
    dead = tmp_path / "dead.jsonl"
    letters = [d["entry"] for d in read_dead_letters(dead)]
    closes = {e["session_id"]: e for e in letters if e["event"] == "session_close"}
    assert closes["child"]["discarded"] == 1 and closes["child"]["levels"] == {"INFO": 1}
    assert closes["child"]["summary"] == {"rows": 3, "api_token": "***", "note": "é\u2028"}
    assert closes["failed"]["levels"] == {"DEBUG": 1, "INFO": 1, "ERROR": 1}
    failed = [e for e in letters if e["session_id"] == "failed" and e["event"] == "log"]
    assert [e["message"] for e in failed] == ["written at once", "held, then written", "boom"]
    assert failed[1]["timestamp"] < failed[0]["timestamp"]  # its call time, a lower seq later
    starts = {e["session_id"]: e for e in letters if e["event"] == "session_start"}
    assert starts["child"]["parent_session_id"] == starts["failed"]["parent_session_id"]
    assert starts["child"]["parent_session_id"] == "parent"
    (tmp_path / "down").mkdir()
    report = _replay(dead, FileSink(tmp_path / "down" / "{session_id}.jsonl"))
    assert report.ok and report.resent == len(letters) == 10
    for sid in ("parent", "child", "failed"):
        replayed = (tmp_path / "down" / f"{sid}.jsonl").read_bytes()
        assert replayed.splitlines(keepends=True) == _reference_lines(tmp_path, sid)
    assert not dead.exists()
