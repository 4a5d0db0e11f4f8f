"""Rotating log files: a new file every 16 KiB, rotated files gzipped, the newest 10 kept.

Run it with a directory (default: a new temporary one)::

    python examples/rotating_files.py [DIR]

It logs three sessions into ``DIR/app.jsonl``, which rotates into
``DIR/app.<UTC stamp>.jsonl.gz`` files, then reads every file back and checks that each
session is whole.
"""

import logging
import os
import sys
import tempfile

from async_session_logger import SessionLogger, read_sessions
from async_session_logger.sinks import FileSink

directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="rotating-")
os.makedirs(directory, exist_ok=True)
path = os.path.join(directory, "app.jsonl")

sink = FileSink(
    path,
    rotate_bytes=16 * 1024,  # rotate before a file would pass 16 KiB
    compress="gzip",  # rotated files become .gz, on a worker thread
    keep=10,  # the 10 newest rotated files stay, older ones are deleted
    fsync=1.0,  # flush to the disk at most once a second (and at close)
)
with SessionLogger(sinks=[sink], dead_letter_path=None) as logger:
    for job in range(3):
        with logger.session(f"job-{job}", metadata={"job": job}) as session:
            for step in range(150):
                level = logging.WARNING if step % 50 == 49 else logging.INFO
                session.log(level, f"job {job} step {step}", {"step": step})
            logger.save_logs()  # hand this job's entries to the file before the next

# Rotated files sort by name in the order they were written; the live file comes last.
files = [*FileSink.rotated_files(path), path]
for name in files:
    print(f"{os.path.basename(name):45} {os.path.getsize(name):7,} bytes")
for session in read_sessions(*files):
    whole = "whole" if not session.missing_seqs and session.close else "INCOMPLETE"
    print(f"{session.session_id}: {len(session.entries)} entries, {session.status}, {whole}")
print(f"logs in {directory}")
