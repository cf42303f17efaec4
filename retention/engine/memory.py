"""A process's peak memory, as the Dask workers report it and the benchmarks record it."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> int:
    """This process image's peak resident memory (VmHWM), in MiB.

    Not ``getrusage`` where Linux says: it carries ``ru_maxrss`` across exec, so a child
    started by ``subprocess`` from a large parent reports the parent's peak (7.1 GiB
    after a benchmark had generated a clinic in-process, for a run that used far less).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
