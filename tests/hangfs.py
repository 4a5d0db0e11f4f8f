"""A real filesystem that hangs on command: FUSE, passing through to a directory.

Run as ``python hangfs.py BACKING MOUNTPOINT CONTROL``. Each name listed in the file CONTROL
(``fsync``, ``write``, ``flush``: what close(2) waits for) is an operation that blocks, as on a
hung NFS mount, until the name is removed from it. Each fsync appends the file's path and size
to ``CONTROL.fsyncs``. Killing this process makes the kernel fail the blocked calls
(``ENOTCONN``), so a test can always end.
Used by the ``hung_mount`` fixture in ``conftest.py``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from fuse import FUSE, Operations  # type: ignore[import-untyped]

_STAT = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")
_STATVFS = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")


class HangFS(Operations):  # type: ignore[misc]
    def __init__(self, backing: str, control: str) -> None:
        self.backing = backing
        self.control = control

    def _path(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _hang(self, op: str) -> None:
        while True:
            try:
                with open(self.control, encoding="utf-8") as fh:
                    if op not in fh.read().split():
                        return
            except FileNotFoundError:
                return
            time.sleep(0.02)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        st = os.lstat(self._path(path))
        return {key: getattr(st, key) for key in _STAT}

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._path(path), mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._path(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._hang("write")
        return os.write(fh, data)  # opened O_APPEND, as the writer's own file

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        os.truncate(self._path(path), length)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._hang("fsync")
        os.fsync(fh)
        with open(self.control + ".fsyncs", "a", encoding="utf-8") as log:
            log.write(f"{path} {os.fstat(fh).st_size}\n")  # what each fsync covered
        return 0

    def flush(self, path: str, fh: int) -> int:
        self._hang("flush")
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def unlink(self, path: str) -> None:
        os.unlink(self._path(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))

    def statfs(self, path: str) -> dict[str, Any]:
        st = os.statvfs(self._path(path))
        return {key: getattr(st, key) for key in _STATVFS}


if __name__ == "__main__":
    backing, mountpoint, control = sys.argv[1:4]
    FUSE(HangFS(backing, control), mountpoint, foreground=True, nothreads=False)
