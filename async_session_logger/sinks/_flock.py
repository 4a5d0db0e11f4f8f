"""Advisory locks on a FileSink's live file, so that processes sharing it rotate it safely.

Writers hold a shared ``flock`` on their own descriptor of the live file while they check that
the path still names it and append; a rotation holds the exclusive lock on the same inode while
it checks again and renames. So no cooperating process ever appends to a file after it was
rotated. Where ``flock`` fails (some network filesystems) the sink goes on without the lock.
"""

from __future__ import annotations

import sys
import time
from typing import Final

__all__ = ["LOCK_WAIT_S", "lock_exclusive", "lock_shared", "try_lock_shared", "unlock"]

# The longest a worker thread waits for a lock: a peer process stopped (Ctrl-Z, a debugger)
# while it holds one must not take the shared I/O threads with it.
LOCK_WAIT_S: Final = 1.0

if sys.platform != "win32":
    import fcntl

    def _poll(fd: int, operation: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            except OSError:  # no flock on this filesystem: best effort
                pass
            return True

    def try_lock_shared(fd: int) -> bool:
        """Take the shared lock without waiting; False if a rotation holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no flock on this filesystem: best effort
            pass
        return True

    def lock_shared(fd: int, timeout: float = LOCK_WAIT_S) -> bool:
        """Take the shared lock, waiting up to ``timeout`` while a rotation holds it (call on
        a thread); False if it did not come."""
        return _poll(fd, fcntl.LOCK_SH, timeout)

    def lock_exclusive(fd: int, timeout: float = LOCK_WAIT_S) -> None:
        """Take the exclusive lock, waiting up to ``timeout`` for appends under way (call on a
        thread).

        Raises:
            TimeoutError: another process held a lock all along (an OSError: the rotation
                counts as failed and is retried later).
        """
        if not _poll(fd, fcntl.LOCK_EX, timeout):
            raise TimeoutError(f"the file stayed locked by another process for {timeout:g} s")

    def unlock(fd: int) -> None:
        """Release the lock."""
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass

else:  # pragma: no cover - no flock: rotation is for one process only (see docs/files.md)

    def try_lock_shared(fd: int) -> bool:
        """Take the shared lock without waiting (a no-op here)."""
        return True

    def lock_shared(fd: int, timeout: float = LOCK_WAIT_S) -> bool:
        """Take the shared lock (a no-op here)."""
        return True

    def lock_exclusive(fd: int, timeout: float = LOCK_WAIT_S) -> None:
        """Take the exclusive lock (a no-op here)."""

    def unlock(fd: int) -> None:
        """Release the lock (a no-op here)."""
