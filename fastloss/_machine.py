"""The machine a run happens on: CPU model, vector features, cores (a leaf module, shared by
the CLI and the bench)."""

from __future__ import annotations

import os
import platform

from ._backends import default_threads

__all__ = ["cpu_description", "default_threads"]


def cpu_description() -> dict:
    """CPU model and the vector features that matter to the kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "neon", "asimd")
    return {"model": model, "features": [f for f in wanted if f in flags],
            "cores": os.cpu_count()}
