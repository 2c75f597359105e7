"""Start-up: what each ``asr-transfer`` command imports before it does anything, from ``python -X importtime``.

For every command, ``asr-transfer COMMAND --help`` runs in a fresh process ``--repeats`` times: the median wall time,
the import time summed over top-level imports (``-X importtime``'s cumulative column), whether torch and
transformers were imported, and the three most expensive top-level imports. ``--help`` builds the command's parser
and nothing else, so this is the fixed cost a user pays before the command's own work; torch belongs there only
for commands whose arguments need it. A last row times ``python -c "import torch, transformers"`` alone, for scale.
"""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

import common
from common import Section, table

IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)")


def imports_of(stderr: str) -> tuple[dict[str, float], set[str]]:
    """Top-level modules with their cumulative import seconds, and every package imported at any depth, from
    ``-X importtime`` output."""
    top: dict[str, float] = {}
    packages: set[str] = set()
    for line in stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        packages.add(m.group(3).split(".")[0])
        if len(m.group(2)) == 1:  # one space: imported by the program itself, not by another module
            top[m.group(3)] = top.get(m.group(3), 0.0) + int(m.group(1)) / 1e6
    return top, packages


def measure(cmd: list[str], repeats: int) -> tuple[float, dict[str, float], set[str]]:
    walls, top, packages = [], {}, set()
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"error: {' '.join(cmd)} exited {done.returncode}: {done.stderr[-500:]}")
        top, packages = imports_of(done.stderr)
    return statistics.median(walls), top, packages


def main(argv=None) -> int:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from asr_transfer.cli import COMMANDS

    section = Section("startup: import time of every command (python -X importtime, --help)").start()
    rows, data = [], {}
    runs = [(name, ["-m", "asr_transfer.cli", name, "--help"]) for name in COMMANDS]
    runs.append(("(import torch, transformers)", ["-c", "import torch, transformers"]))
    for name, cmd in runs:
        wall, top, loaded = measure(cmd, args.repeats)
        heavy = sorted(top.items(), key=lambda kv: -kv[1])[:3]
        rows.append([name, wall, sum(top.values()), "yes" if "torch" in loaded else "no",
                     "yes" if "transformers" in loaded else "no", ", ".join(f"{m} {s:.2f}" for m, s in heavy)])
        data[name] = {"wall_s": wall, "import_s": sum(top.values()), "top": dict(heavy)}
        print(f"{name}: {wall:.2f} s", flush=True)
    section.add(f"Median of {args.repeats} fresh processes per row.\n")
    section.add(table(["command (--help)", "wall s", "imports s", "torch", "transformers", "largest imports (s)"],
                      rows) + "\n")
    section.data = data
    section.append(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
