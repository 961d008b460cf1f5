"""A process's own peak memory, for probes that run in a child process."""

import resource
import sys
from pathlib import Path


def peak_kib() -> int:
    """Peak resident memory of this process in KiB: /proc's VmHWM where there is one.

    Not ru_maxrss on Linux: it carries over the peak of the parent a child was forked from, so a probe
    started by a large pytest process would report pytest's peak and could never see its own growth.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS counts bytes
