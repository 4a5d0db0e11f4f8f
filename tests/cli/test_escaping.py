"""No value from a log reaches the terminal raw: controls and bidi overrides are shown escaped."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from .helpers import run_cli, start_cli, wait_until

# What a hostile publisher can put in any field (collect stores lines byte for byte): clear the
# screen, ring, backspace, return to column 0, a one-character C1 CSI, DEL, a right-to-left
# override and an isolate, a line separator.
EVIL = "\x1b[2J\x07\x08\rX\x9b31m\x7f\u202eevil\u2066\u2028"
# Every character that must not leave the CLI raw. Output lines end in LF; tabs are never ours.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The colour codes the CLI itself writes with --color always.
OUR_SGR = re.compile(r"\x1b\[[0-9;]*m")
# How the CLI must show them: as in a Python literal.
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(text: str) -> str:
    """Return ``text`` as the CLI must print it (the test's own oracle, not the CLI's code)."""
    return "".join(
        c
        if not UNSAFE.match(c) and c != "\n"
        else _SHORT.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )


SHOWN = ("\\x1b[2J", "\\x07", "\\x08", "\\r", "\\x9b31m", "\\x7f", "\\u202e", "\\u2066", "\\u2028")


def _entry(seq: int, event: str, **fields: Any) -> dict[str, Any]:
    return {
        "timestamp": f"2026-11-24T06:23:{seq:02d}.000000Z",
        "session_id": "s1",
        "seq": seq,
        "event": event,
        "level": "INFO",
        "levelno": 20,
        "message": "m",
        **fields,
    }


HOSTILE = [
    _entry(0, "session_start", metadata={f"k{EVIL}": f"v{EVIL}", "nested": {"n": EVIL}}),
    _entry(
        1,
        "log",
        level=f"WARN{EVIL}",
        levelno=30,
        message=f"first{EVIL}\nsecond line{EVIL}",
        custom_fields={f"f{EVIL}": f"x{EVIL}"},
        exception=f"Traceback{EVIL}",
        **{f"extra{EVIL}": EVIL},
    ),
    _entry(2, "gap", level=EVIL, dropped=f"3{EVIL}"),
    {**_entry(3, "log"), "timestamp": f"2026-11-24T06:23:03Z{EVIL}"},
    _entry(4, "session_close", status=f"closed{EVIL}", duration_s=1.0, entries=2),
    {**_entry(0, "session_start"), "session_id": f"s2{EVIL}", "metadata": {}},
]


def _write(path: Path) -> Path:
    """Write the hostile entries as a publisher could: raw UTF-8, a raw CR between tokens."""
    lines = [json.dumps(e, ensure_ascii=False).encode() for e in HOSTILE]
    lines[3] = lines[3].replace(b', "seq"', b',\r"seq"', 1)  # JSON whitespace, valid
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _assert_safe(text: str) -> None:
    found = sorted({f"U+{ord(c):04X}" for c in UNSAFE.findall(OUR_SGR.sub("", text))})
    assert not found, f"raw {found} reached the terminal"


@pytest.mark.parametrize("colour", ["never", "always"])
def test_show_escapes_every_field(tmp_path: Path, colour: str) -> None:
    """show: id, status, level, message, metadata, fields, extra keys, timestamps escaped."""
    log = _write(tmp_path / "log.jsonl")
    done = run_cli("show", "s1", log, "--color", colour)
    assert done.returncode == 0, done.stderr
    _assert_safe(done.stdout + done.stderr)
    out = OUR_SGR.sub("", done.stdout)
    header = out.splitlines()[0]
    assert header.startswith(f"session s1 · closed{escape(EVIL)} · started")
    for shown in (
        f"k{escape(EVIL)}: v{escape(EVIL)}",
        f"#1    WARN{escape(EVIL)} first{escape(EVIL)}",
        f"    second line{escape(EVIL)}",  # a real line break in a message: indented
        f"f{escape(EVIL)}: x{escape(EVIL)}",
        f"exception: Traceback{escape(EVIL)}",
        f"extra{escape(EVIL)}: {escape(EVIL)}",
        f"(3{escape(EVIL)} entries dropped)",
        f"2026-11-24T06:23:03Z{escape(EVIL)}  #3",
        f"#4    INFO     m (closed{escape(EVIL)}, 1.000s, 2 entries)",
    ):
        assert shown in out, shown
    for text in SHOWN:
        assert text in out


def test_show_json_is_equivalent_json_with_unsafe_characters_escaped(tmp_path: Path) -> None:
    """show --json: the same entries back from json.loads, but no raw C1 or bidi character."""
    log = _write(tmp_path / "log.jsonl")
    done = run_cli("show", "s1", log, "--json")
    assert done.returncode == 0, done.stderr
    _assert_safe(done.stdout)
    assert [json.loads(line) for line in done.stdout.splitlines()] == HOSTILE[:5]
    assert "\\u202e" in done.stdout and "\\u009b" in done.stdout


def test_sessions_table_and_json_escape_ids_and_statuses(tmp_path: Path) -> None:
    """sessions: one table row per session whatever the id and status hold; JSON stays JSON."""
    log = _write(tmp_path / "log.jsonl")
    done = run_cli("sessions", log)
    assert done.returncode == 0, done.stderr
    _assert_safe(done.stdout + done.stderr)
    _, first, second = done.stdout.splitlines()
    assert first.startswith("s1 ") and first.endswith(f"closed{escape(EVIL)}")
    assert second.startswith(f"s2{escape(EVIL)} ") and second.endswith("open")
    listed = run_cli("sessions", log, "--json")
    _assert_safe(listed.stdout)
    summaries = json.loads(listed.stdout)
    assert [(s["session_id"], s["status"]) for s in summaries] == [
        ("s1", f"closed{EVIL}"),
        (f"s2{EVIL}", "open"),
    ]
    assert summaries[0]["metadata"] == HOSTILE[0]["metadata"]


def test_a_mistyped_id_suggests_hostile_ids_escaped(tmp_path: Path) -> None:
    """The did-you-mean hint quotes ids from the log: they are escaped on stderr too."""
    log = _write(tmp_path / "log.jsonl")
    typed = f"s2{EVIL[:-1]}"  # the id less its last character
    done = run_cli("show", typed, log)
    assert done.returncode == 1
    _assert_safe(done.stderr)
    assert done.stderr == (
        f"async-session-logger: error: no session '{escape(typed)}' in {log}; "
        f"did you mean 's2{escape(EVIL)}'?\n"
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_tail_escapes_history_and_new_entries(tmp_path: Path, as_json: bool) -> None:
    """tail (human and --json): what the file holds and what is appended later, escaped."""
    log = _write(tmp_path / "log.jsonl")
    out, err = tmp_path / "out", tmp_path / "err"
    proc = start_cli(
        "tail", log, "-n", "50", "--interval", "0.05", *(["--json"] if as_json else []),
        out=out, err=err,
    )  # fmt: skip
    try:
        wait_until(lambda: out.read_bytes().count(b"\n") >= 6, 20, "the history")
        late = _entry(5, "log", level=f"LATE{EVIL}", message=f"late{EVIL}")
        with open(log, "ab") as fh:
            fh.write(json.dumps(late, ensure_ascii=False).encode() + b"\n")
        wait_until(lambda: b"LATE" in out.read_bytes(), 20, "the appended entry")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    text = out.read_text(encoding="utf-8")
    _assert_safe(text + err.read_text(encoding="utf-8"))
    if as_json:
        entries = [json.loads(line) for line in text.splitlines()]
        assert entries == [*HOSTILE, late]
    else:
        assert f"s2{escape(EVIL)}  #0" in text
        assert f"LATE{escape(EVIL)} late{escape(EVIL)}" in text


def test_escape_covers_every_control_and_bidi_character_and_nothing_else() -> None:
    """escape() leaves printable text (any script) alone and shows each unsafe character."""
    from async_session_logger.cli._render import escape, json_text

    unsafe = [
        *map(chr, range(0x00, 0x20)),
        *map(chr, range(0x7F, 0xA0)),
        "\u2028",
        "\u2029",
        *map(chr, range(0x202A, 0x202F)),
        *map(chr, range(0x2066, 0x206A)),
    ]
    for char in unsafe:
        shown = escape(f"a{char}b")
        assert char not in shown and shown.startswith("a\\") and shown.endswith("b"), repr(char)
        assert json.loads(json_text(char)) == char and not UNSAFE.search(json_text(char))
    assert escape("a\nb", multiline=True) == "a\nb"
    assert (escape("\x1b"), escape("\u202e"), escape("\r\n\t")) == ("\\x1b", "\\u202e", "\\r\\n\\t")
    plain = "ASCII ~!@#$%^&*()_+ é ß 日本語 עברית العربية 🙂 \\x1b as text"
    assert escape(plain) == plain
    assert json.loads(json_text(plain)) == plain
