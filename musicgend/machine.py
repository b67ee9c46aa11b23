"""What a benchmark ran on, for its JSON: timings compare only between like machines.

The same "2-core x86_64" can be hosts of different speed: LiteRT's int8 call on the bundled
model took 1.3 ms on an AMD EPYC with AVX-512 and 3.8 ms on one with AVX2 only (measured).
"""

from __future__ import annotations

import os
import platform
from typing import Any

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
"""The /proc/cpuinfo flags that decide how fast NumPy, LiteRT and TensorFlow run here."""


def machine_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU count, architecture, CPU model and its SIMD flags (of :data:`SIMD_FLAGS`), where
    ``/proc/cpuinfo`` tells them."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    fields: dict[str, str] = {}  # the first CPU's
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "flags"):
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        return info
    if "model name" in fields:
        info["cpu_model"] = fields["model name"]
    if "flags" in fields:
        present = set(fields["flags"].split())
        info["simd"] = [flag for flag in SIMD_FLAGS if flag in present]
    return info
