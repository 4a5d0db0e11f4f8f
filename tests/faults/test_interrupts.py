"""Ctrl-C wherever Python may deliver it in a verb: no lock stays held, nothing hangs.

Python runs a signal handler (Ctrl-C: ``KeyboardInterrupt``) in the main thread between two
bytecodes, wherever that thread is (after a call, at a loop's jump back, on entering a
function). ``tests/faults/test_exit.py`` sends real SIGINTs to a
script that logs without end; one run in about twenty caught the verb right after it took
the recorder's lock and before the ``try`` that releases it, and the exit hook then waited
for that lock for ever. These tests make each point of a verb where CPython may run a signal
handler (entering a function, after each call, a loop's jump back; in this package's frames,
one run per point) the one where the exception is raised, as a trace function can, and
check that the logger still takes entries from another thread and closes.
"""

from __future__ import annotations

import dis
import signal
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import async_session_logger
from async_session_logger import SessionLogger
from async_session_logger.sinks import MemorySink

from ..conftest import held

_PACKAGE = str(Path(async_session_logger.__file__).parent)


def _checks_for_signals(opname: str) -> bool:
    # The instructions after which CPython runs pending signal handlers (its "eval breaker"
    # check): a call, a loop's jump back. A handler's exception appears before the next one.
    return opname.startswith("CALL") or opname == "JUMP_BACKWARD"


def _interrupt_at(index: int, verb: Callable[[], Any]) -> str | None:
    """Run ``verb`` raising KeyboardInterrupt at its ``index``-th point where a signal's
    handler may run (counted in this package's frames: on entering a function, after a call
    or a loop's jump back); return where, or None if the verb had fewer such points."""
    seen = 0
    where: str | None = None
    last: dict[int, str] = {}  # frame id -> the opname of its instruction just run

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen, where
        if event == "opcode":
            code = frame.f_code
            previous = last.get(id(frame))
            last[id(frame)] = dis.opname[code.co_code[frame.f_lasti]]
            if previous is None or _checks_for_signals(previous):
                if seen == index:
                    where = f"{code.co_qualname} line {frame.f_lineno}"
                    seen += 1
                    raise KeyboardInterrupt  # the trace function is unset: one per run
                seen += 1
        elif event == "return":
            last.pop(id(frame), None)
        return local

    def enter(frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(_PACKAGE):
            return None
        frame.f_trace_opcodes = True
        return local

    sys.settrace(enter)
    try:
        verb()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return where


def _responds(logger: SessionLogger) -> bool:
    """Whether another thread can still log and flush (no lock left held)."""
    done = threading.Event()

    def probe() -> None:
        logger.log_entry("probe", "still here")
        logger.save_logs(timeout=5)
        done.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    return done.wait(10)


@pytest.mark.parametrize("verb", ["log_entry", "start_session", "close_session"])
def test_a_keyboard_interrupt_at_any_instruction_leaves_no_lock_held(verb: str) -> None:
    logger = SessionLogger(sinks=[MemorySink()], dead_letter_path=None)
    logger.start_session("probe")
    logger.start_session("s")
    runs = 0

    def call_of(sid: str) -> Callable[[], Any]:
        if verb == "close_session":
            logger.start_session(sid)
        if verb == "log_entry":
            return partial(logger.log_entry, "s", "entry", 20, {"i": 1})
        if verb == "start_session":
            return partial(logger.start_session, sid, {"user": "u"})
        return partial(logger.close_session, sid)

    try:
        for index in range(5_000):
            # Traced once without an interrupt first, every time: Python 3.12 sends no
            # "opcode" events in the code of the first call it traces, and 3.13 none after
            # an exception left a traced `with` block, until a call runs through it again.
            assert _interrupt_at(-1, call_of(f"w{index}")) is None
            where = _interrupt_at(index, call_of(f"x{index}"))
            if where is None:
                break  # the verb ran to its end: every instruction had its turn
            runs += 1
            assert _responds(logger), f"a lock stayed held after an interrupt in {where}"
    finally:
        report = logger.close(timeout=10)
    assert runs >= 10  # the trace saw the verb's calls
    assert report.sinks["memory"].pending == 0


def test_ctrl_c_while_waiting_for_the_lock_leaves_another_threads_hold_alone() -> None:
    """A verb waiting for the recorder's lock that another thread holds is interrupted by a
    real SIGINT: it raises KeyboardInterrupt without releasing that other thread's hold (the
    verb releases in a ``finally`` that also runs when ``acquire()`` itself was interrupted),
    and the logger works once the holder lets go."""
    sink = MemorySink()
    logger = SessionLogger(sinks=[sink], dead_letter_path=None)
    logger.start_session("probe")
    logger.start_session("s")
    lock = logger._recorder._lock
    holding, let_go = threading.Event(), threading.Event()
    still_held: list[bool] = []

    def holder() -> None:
        with lock:
            holding.set()
            let_go.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(10)
        main = threading.main_thread().ident
        timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            logger.log_entry("s", "waits for the lock", 20, {"i": 1})
        timer.join()
        still_held.append(held(lock))  # asked from a third thread
    finally:
        let_go.set()
        thread.join(30)
    assert still_held == [True], "the interrupted verb released the other thread's hold"
    assert _responds(logger)
    logger.log_entry("s", "after it", 20)
    report = logger.close(timeout=10)
    assert report.ok
    messages = [e["message"] for e in sink.entries if e["event"] == "log"]
    assert messages == ["still here", "after it"]  # the interrupted entry was never taken
