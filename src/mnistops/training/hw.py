"""CPU feature detection at run time (never assume AMX / avx512_bf16)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX tiles or AVX-512 BF16)."""
    flags = cpu_flags()
    return platform.machine() in ("x86_64", "AMD64") and bool({"amx_bf16", "avx512_bf16"} & flags)


def describe() -> str:
    """One line for logs: machine and the bf16-relevant flags."""
    feats = sorted({"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"} & cpu_flags())
    return f"{platform.machine()} [{' '.join(feats) or 'no simd flags read'}]"
