"""CPU time and resident memory of benchmarked server processes, read from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FDS_BESIDE", "cpu_seconds", "machine_info", "open_files_limit", "process_tree",
           "rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


#: file descriptors a server under test and the load generator use beside their
#: connections (listening sockets, logs, pools, libraries)
FDS_BESIDE = 256


def open_files_limit() -> int | None:
    """The soft limit of open files this process (and so the load generator and the servers
    it starts) may hold; None when unlimited or unknown. A benchmark whose connections need
    more is refused before it starts, not run into socket errors."""
    import resource

    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return raw[raw.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (worker processes of a server)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        f = _stat_fields(int(d.name))
        if f is not None:
            children.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is None:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by these processes (10 ms resolution)."""
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            # fields 14 and 15 of stat (utime, stime), counted from after the name
            total += int(f[11]) + int(f[12])
    return total / _TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    """Sum of the processes' resident set sizes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def machine_info() -> dict[str, object]:
    """What a figure was measured on (and how busy the machine was when the run started)."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": list(os.getloadavg()),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
