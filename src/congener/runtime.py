"""Process-level settings that make PyTorch fast on a CPU, and device selection.

glibc returns large freed blocks to the OS by default; PyTorch's per-step temporaries then
cost page faults on every allocation (measured: ~40 % of a DimeNet++ training step on 2
cores). Keeping them mapped (M_MMAP_MAX=0, large M_TRIM_THRESHOLD) removes that cost.
"""

from __future__ import annotations

import ctypes
import os

import torch

from congener.errors import ConfigError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_configured = False


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc only). Returns True if applied."""
    global _configured
    if _configured:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except OSError:
        return False
    _configured = ok
    return ok


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: all cores this process may use)."""
    torch.set_num_threads(max(1, threads or available_cores()))
    return torch.get_num_threads()


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}") from exc


def resolve_dtype(name: str) -> torch.dtype:
    """'float32' or 'float64' -> torch dtype."""
    table = {"float32": torch.float32, "float64": torch.float64}
    if name not in table:
        raise ConfigError(f"dtype must be float32 or float64 (got {name!r})")
    return table[name]


# Whether model code avoids data-dependent branches that read a device tensor on the host.
# None: avoid them on accelerators (where each read waits for the device queue), keep them on
# the CPU (where a read is free and the branch skips work). Tests set True or False to run
# either path anywhere.
SYNC_FREE: bool | None = None


def sync_free(tensor: torch.Tensor) -> bool:
    """True if code handling `tensor` should avoid host reads of device values (`SYNC_FREE`)."""
    return tensor.device.type != "cpu" if SYNC_FREE is None else SYNC_FREE
