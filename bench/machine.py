"""The machine a benchmark ran on: CPU model, the ISA features that decide its figures,
cores and load. Every benchmark JSON carries this, so figures are read with their terms."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """Model name and the ISA flags that matter here (int8 and bf16 kernels)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags_line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    return {
        "cpu": model,
        "isa": [f for f in FEATURES if f in flags],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
