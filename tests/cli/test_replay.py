"""`replay-dead-letters`: real dead letters re-sent to a file and to a real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from async_session_logger import AsyncSessionLogger, read_dead_letters
from async_session_logger.sinks import FileSink, MqttSink

from ..mqtt_broker import Broker, free_port
from .helpers import run_cli


def _dead_letters(tmp_path: Path) -> Path:
    """Log through a file sink whose directory is missing, next to a working reference file."""
    dead = tmp_path / "dead_letters.jsonl"

    async def log() -> None:
        down = FileSink(tmp_path / "down" / "{session_id}.jsonl", mkdir=False, retries=0)
        ref = FileSink(tmp_path / "reference.jsonl", name="reference")
        async with AsyncSessionLogger(
            sinks=[down, ref], dead_letter_path=dead, on_error=lambda e: None
        ) as alog:
            for sid in ("a", "b"):
                await alog.start_session(sid, metadata={"sid": sid})
                for i in range(5):
                    await alog.log_entry(sid, f"{sid}{i}", "WARNING", {"i": i})
                await alog.close_session(sid)

    asyncio.run(log())
    return dead


def test_replay_to_a_file_writes_the_original_lines_and_empties_the_file(tmp_path: Path) -> None:
    """--to file:PATH: the entries land byte for byte, the dead-letter file goes away."""
    dead = _dead_letters(tmp_path)
    out = tmp_path / "recovered.jsonl"
    done = run_cli("replay-dead-letters", dead, "--to", f"file:{out}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"re-sent 14 entries to file {out}\n"
    assert done.stderr == ""
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()
    assert not dead.exists()
    done = run_cli("replay-dead-letters", dead, "--to", f"file:{out}")
    assert (done.returncode, done.stderr) == (
        1,
        f"async-session-logger: error: {dead}: no such file\n",
    )


def test_a_failing_target_keeps_every_letter_and_exits_1(tmp_path: Path) -> None:
    """A target that cannot be written: exit 1, the reason, the file unchanged."""
    dead = _dead_letters(tmp_path)
    original = dead.read_bytes()
    done = run_cli("replay-dead-letters", dead, "--to", f"file:{tmp_path}", "--retries", "0")
    assert done.returncode == 1
    assert "re-sent 0 entries" in done.stdout and "14 failed" in done.stdout
    assert "IsADirectoryError" in done.stdout and f"14 kept in {dead}" in done.stdout
    assert dead.read_bytes() == original


def test_other_sinks_letters_stay_unless_asked_and_keep_changes_nothing(tmp_path: Path) -> None:
    """--to mqtt://... takes only mqtt letters; --keep leaves the file; bad --to is usage."""
    dead = _dead_letters(tmp_path)
    original = dead.read_bytes()
    out = tmp_path / "copy.jsonl"
    done = run_cli("replay-dead-letters", dead, "--to", f"file:{out}", "--keep")
    assert done.returncode == 0 and dead.read_bytes() == original and out.exists()
    done = run_cli(
        "replay-dead-letters", dead, "--to", f"file:{tmp_path / 'x.jsonl'}", "--from-sink", "smtp"
    )
    assert done.returncode == 0
    assert "re-sent 0 entries" in done.stdout and "14 letters of other sinks" in done.stdout
    assert dead.read_bytes() == original
    for target, message in (
        ("ftp://host/x", "unknown target"),
        ("mqtt://user:pw@127.0.0.1/logs/{session_id}", "no password in the URL"),
        ("mqtt://127.0.0.1/logs", "must contain {session_id}"),
        ("file:", "needs a path"),
    ):
        done = run_cli("replay-dead-letters", dead, "--to", target, cwd=tmp_path)
        assert done.returncode == 2, target
        assert message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"not a letter\n")
    done = run_cli("replay-dead-letters", garbage, "--to", f"file:{out}")
    assert done.returncode == 0
    assert done.stderr.startswith(f"async-session-logger: warning: {garbage}:1: not valid JSON")
    assert garbage.read_bytes() == b"not a letter\n"


def test_replay_mqtt_letters_to_a_real_broker(tmp_path: Path) -> None:
    """Letters of an MqttSink whose broker was down reach mosquitto once it is up."""
    port = free_port()
    dead = tmp_path / "dead_letters.jsonl"

    async def log_while_down() -> None:
        sink = MqttSink("127.0.0.1", port, reconnect_max=0.2)
        async with AsyncSessionLogger(
            sinks=[sink, FileSink(tmp_path / "local.jsonl")],
            dead_letter_path=dead,
            on_error=lambda e: None,
            close_timeout=0.5,
        ) as alog:
            await alog.start_session("dev-9")
            for i in range(20):
                await alog.log_entry("dev-9", f"m{i}")
            await alog.close_session("dev-9")

    asyncio.run(log_while_down())
    assert {d["sink"] for d in read_dead_letters(dead)} == {"mqtt"}
    with Broker(port=port, workdir=tmp_path / "broker") as broker:
        sub = broker.subscriber("logs/#", workdir=tmp_path / "sub").start()
        done = run_cli(
            "replay-dead-letters", dead, "--to", f"mqtt://127.0.0.1:{port}/logs/{{session_id}}"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"re-sent 22 entries to mqtt://127.0.0.1:{port}/logs/{{session_id}}\n"
        sub.wait_for_sync(lambda s: len(s.entries("logs/dev-9")) >= 22 + 2)
        got = [p for t, p in sub.messages() if t == "logs/dev-9"]
        assert sorted(got) == sorted((tmp_path / "local.jsonl").read_bytes().splitlines())
        assert [json.loads(p)["status"] for t, p in sub.messages() if t.endswith("/status")] == [
            "open",
            "closed",
        ]
        sub.close()
    assert not dead.exists()


def test_a_letter_id_cannot_lead_the_target_path_out_of_its_directory(tmp_path: Path) -> None:
    """--to file:DIR/{session_id}.jsonl with letters whose id is ../../../x or whose entry is
    {}: those are kept and named on stderr, exit 0, every other letter re-sent into DIR."""
    dead = _dead_letters(tmp_path)
    planted = (
        b'{"sink":"file","reason":"r","entry":{"session_id":"../../../x","seq":0,"event":"log"}}\n'
        b'{"sink":"file","reason":"r","entry":{}}\n'
    )
    with open(dead, "ab") as fh:
        fh.write(planted)
    out = tmp_path / "one" / "two" / "three"
    done = run_cli("replay-dead-letters", dead, "--to", f"file:{out}/{{session_id}}.jsonl")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"re-sent 14 entries to file {out}/{{session_id}}.jsonl; 2 invalid lines; "
        f"2 kept in {dead}\n"
    )
    warnings = done.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"async-session-logger: warning: {dead}:15: unsafe session id")
    assert warnings[1] == (
        f"async-session-logger: warning: {dead}:16: not a log entry "
        "(entry lacks session_id, seq, event); kept"
    )
    assert dead.read_bytes() == planted
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl", "b.jsonl"]
    assert not (tmp_path / "x.jsonl").exists()
