"""Instructions per entry, counted by valgrind: a figure that does not move with the machine.

Run by hand (needs ``valgrind``: ``apt-get install valgrind``)::

    .venv/bin/python benchmarks/instructions.py [--entries 30000] [--only NAME ...]

On a shared VM, wall-clock runs of one commit differ by 15-30%, so a change worth 5% needs
many alternated runs to show. Valgrind's cachegrind counts the instructions a process runs
(user space, every thread), the same on every run to within about 1%: each contender runs
twice in a child under it, with N entries and with none (the same imports, logger and
session, so start-up cancels), and the table shows ``(I(N) - I(0)) / N``.

What the count leaves out: time in the kernel (a stdlib ``FileHandler`` makes one write per
record, which costs it more time than its count says), cache misses, and the hand-offs
between threads. Use it to compare two commits of the same code, or a contender with the
floor, and confirm a gain with ``throughput.py`` or ``stdlib_bridge.py``.

The contenders are ``throughput.py``'s (the same passes: one session, 200,000 entries there)
and ``stdlib_bridge.py``'s (``logger.info("request %d done", i, extra=...)`` per record).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
THROUGHPUT = ("floor", "asl-sync", "asl-async", "asl-async-y100", "stdlib", "structlog")
BRIDGE = ("stdlib-file", "bridge-sync", "bridge-async")
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def child(name: str, n: int, directory: str) -> None:
    """Run one contender's pass with ``n`` entries (in the process valgrind watches)."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO_ROOT))  # this checkout, not an installed copy
    if name in BRIDGE:
        import stdlib_bridge

        stdlib_bridge.child(name, n, Path(directory) / f"{name}.log")
        return
    import importlib

    import throughput

    contender = throughput.CONTENDERS[name]
    for module in contender.imports:
        importlib.import_module(module)
    contender.run(str(Path(directory) / f"{name}.jsonl"), n, None)


def count(name: str, n: int) -> int:
    """Return the instructions one child run of ``name`` with ``n`` entries takes."""
    with tempfile.TemporaryDirectory() as directory:
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--child",
                name,
                str(n),
                directory,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    found = _REFS.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{name} ({n} entries) failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=THROUGHPUT + BRIDGE)
    parser.add_argument("--child", nargs=3, metavar=("NAME", "N", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, n, directory = args.child
        child(name, int(n), directory)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    names = args.only or list(THROUGHPUT + BRIDGE)
    n = args.entries
    per: dict[str, float] = {}
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        per[name] = (count(name, n) - count(name, 0)) / n
    print(f"\ninstructions per entry ({n:,} entries; valgrind cachegrind, user space)\n")
    print(f"{'contender':<16} {'instructions':>13}  ratio")
    for name in names:
        base = "floor" if name in THROUGHPUT else "stdlib-file"
        ratio = ""
        if base in per and name != base:
            # For the loggers: floor / ours, the throughput targets' sense (higher is better).
            # For the bridge: ours / FileHandler, the bridge target's sense (lower is better).
            ratio = (
                f"{per[base] / per[name]:.2f}x floor's speed"
                if base == "floor"
                else f"{per[name] / per[base]:.2f}x FileHandler's count"
            )
        print(f"{name:<16} {per[name]:>13,.0f}  {ratio}")


if __name__ == "__main__":
    main()
