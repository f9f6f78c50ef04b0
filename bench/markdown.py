"""Generated blocks in BENCHMARKS.md and README.md: each bench module rewrites only the text between
its own markers, so one `make bench` run refreshes every figure it measures and leaves the notes
written by hand around them alone.

    <!-- bench:NAME -->
    ...generated...
    <!-- /bench:NAME -->
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path


def replace_block(path: Path, name: str, body: str) -> None:
    """Put `body` between the markers of block `name` in `path` (appended, with its markers, when the
    file has none)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def machine() -> str:
    """One line: date, CPU, cores, memory and SIMD flags (for the head of a generated block: numpy's
    BLAS runs AVX-512 kernels where the CPU has them, pgvector's stay AVX2, so ratios move with them)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, CPU flags {cpu_flags()}"


def cpu_flags(cpuinfo: str | None = None) -> str:
    """The SIMD flags that decide which kernels the libraries run, e.g. "AVX2, FMA, no AVX-512"."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    words = ["AVX2" if "avx2" in flags else "no AVX2"]
    if "fma" in flags:
        words.append("FMA")
    words.append("AVX-512" if "avx512f" in flags else "no AVX-512")
    if "avx512_bf16" in flags:  # what bfloat16 kernels run fast on
        words.append("AVX-512 BF16")
    return ", ".join(words)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write(name: str, body: str, files: list[str]) -> None:
    """Block `name` into each of `files` (a bench module's --write)."""
    for f in files:
        replace_block(Path(f), name, body)
        print(f"wrote block '{name}' of {f}")
