"""Advisory locks on a FileSink's live file, so that processes sharing it rotate it safely.

Writers hold a shared ``flock`` on their own descriptor of the live file while they check that
the path still names it and append; a rotation holds the exclusive lock on the same inode while
it checks again and renames. So no cooperating process ever appends to a file after it was
rotated. Where ``flock`` fails (some network filesystems) the sink goes on without the lock.
"""

from __future__ import annotations

import sys

__all__ = ["lock_exclusive", "lock_shared", "try_lock_shared", "unlock"]

if sys.platform != "win32":
    import fcntl

    def try_lock_shared(fd: int) -> bool:
        """Take the shared lock without waiting; False if a rotation holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no flock on this filesystem: best effort
            pass
        return True

    def lock_shared(fd: int) -> None:
        """Take the shared lock, waiting while a rotation holds it (call on a thread)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass

    def lock_exclusive(fd: int) -> None:
        """Take the exclusive lock, waiting for appends under way (call on a thread)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass

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

    def lock_shared(fd: int) -> None:
        """Take the shared lock (a no-op here)."""

    def lock_exclusive(fd: int) -> None:
        """Take the exclusive lock (a no-op here)."""

    def unlock(fd: int) -> None:
        """Release the lock (a no-op here)."""
