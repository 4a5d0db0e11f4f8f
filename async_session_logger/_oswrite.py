"""Write a whole buffer to a file descriptor, saying how much went out if it fails."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write ``data`` to ``fd``, retrying short writes.

    Returns:
        ``(written, None)`` when all of it went out, or ``(written, error)`` with the bytes
        written before ``os.write`` raised: the caller decides whether to undo them (a
        dead-letter append) or to finish them later (the collector's files).
    """
    view = memoryview(data)
    done = 0
    try:
        while done < len(view):
            done += os.write(fd, view[done:])
    except OSError as exc:
        return done, exc
    return done, None
