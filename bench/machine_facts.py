"""The machine a CPU benchmark ran on, written beside its figures.

Absolute figures (characters or tokens per CPU-second, latency) follow the CPU model as much as the
code: the same commits ran 2.2-2.9x slower on interpreter-bound work on a first-generation EPYC
than on an earlier session's host (bench/RESULTS.md, ninth session), while the torch-bound demo did
not slow down. A ratio against a reference in the same run is the comparable figure; these facts
say which host an absolute one came from.
"""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def machine_facts() -> dict:
    """CPU model (with family/model numbers: some hosts name only "AMD EPYC"), clock, count, load."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""

    def field(name: str) -> str | None:
        found = re.search(rf"^{name}\s*:\s*(.+)$", cpuinfo, re.M)
        return found.group(1).strip() if found else None

    mhz = field("cpu MHz")
    return {"cpu_model": field("model name") or platform.processor() or platform.machine(),
            "cpu_family": field("cpu family"), "cpu_model_number": field("model"),
            "cpu_mhz": round(float(mhz)) if mhz else None, "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()}


if __name__ == "__main__":
    print(machine_facts())
