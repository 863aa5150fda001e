"""The Stillinger-Weber MD protocol as a validated, frozen dataclass with two presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from congener.errors import ConfigError

MAX_TEMPERATURE_K = 20_000.0
MAX_TIMESTEP_FS = 10.0


class Preset(StrEnum):
    """Named protocols: `paper` (the published data set) and `quick` (a laptop minute)."""

    paper = "paper"
    quick = "quick"


@dataclass(frozen=True)
class SWProtocol:
    """How SW-MD data are generated at each temperature.

    temperatures_K: target temperatures (K), one run each.
    timestep_fs: MD time step (fs).
    npt_steps: Nose-Hoover NPT equilibration steps (0 skips NPT; the box stays at the
        lattice constant of the SW pair minimum).
    nvt_steps: NVT production steps; a sample every `sample_every` steps.
    tdamp_steps, pdamp_steps: thermostat and barostat damping times in time steps.
    pressure_bar: NPT target pressure (bar).
    supercell: conventional diamond cells per edge (2 -> 64 atoms).
    """

    temperatures_K: tuple[float, ...]
    timestep_fs: float
    npt_steps: int
    nvt_steps: int
    sample_every: int
    tdamp_steps: int = 100
    pdamp_steps: int = 1000
    pressure_bar: float = 0.0
    supercell: int = 2

    def __post_init__(self) -> None:
        temps = _temperatures(self.temperatures_K)
        object.__setattr__(self, "temperatures_K", temps)
        _check_float("timestep_fs", self.timestep_fs, 0.0, MAX_TIMESTEP_FS)
        _check_float("pressure_bar", self.pressure_bar, -1e6, 1e7, inclusive_low=True)
        _check_int("npt_steps", self.npt_steps, 0)
        for name in ("nvt_steps", "sample_every", "tdamp_steps", "pdamp_steps", "supercell"):
            _check_int(name, getattr(self, name), 1)
        if self.sample_every > self.nvt_steps:
            raise ConfigError(f"sample_every ({self.sample_every}) must not exceed nvt_steps "
                              f"({self.nvt_steps})")

    @classmethod
    def paper(cls) -> SWProtocol:
        """34 temperatures 300-3600 K (step 100 K), 1 fs, 4 ns NPT + 1 ns NVT, a sample per ps."""
        return cls(temperatures_K=tuple(float(t) for t in range(300, 3601, 100)),
                   timestep_fs=1.0, npt_steps=4_000_000, nvt_steps=1_000_000,
                   sample_every=1000)

    @classmethod
    def quick(cls) -> SWProtocol:
        """8 temperatures 300-3600 K, 1 fs, 10 ps NPT + 6 ps NVT, a sample every 0.4 ps (15).

        10 ps NPT is ten barostat periods: enough for a mean volume within ~0.3 GPa of zero
        pressure for 64 atoms (2 ps left up to 3 GPa). Crystals may stay superheated above the
        SW melting point at this length; `paper` runs 400 times longer.
        """
        return cls(temperatures_K=(300.0, 600.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0,
                                   3600.0),
                   timestep_fs=1.0, npt_steps=10_000, nvt_steps=6000, sample_every=400)

    @classmethod
    def preset(cls, name: Preset | str) -> SWProtocol:
        """The protocol of a named preset; `ConfigError` for an unknown name."""
        try:
            preset = Preset(name)
        except ValueError as exc:
            raise ConfigError(f"unknown preset {name!r}; choose from "
                              f"{', '.join(p.value for p in Preset)}") from exc
        return cls.paper() if preset is Preset.paper else cls.quick()

    def with_overrides(self, **overrides: Any) -> SWProtocol:
        """A copy with the given fields replaced (None values are ignored); validated."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown protocol field(s): {', '.join(unknown)}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)

    @property
    def n_samples(self) -> int:
        """Samples per temperature."""
        return self.nvt_steps // self.sample_every

    @property
    def steps_per_temperature(self) -> int:
        """MD steps run per temperature (NPT + sampled NVT)."""
        return self.npt_steps + self.n_samples * self.sample_every

    @property
    def chunk_steps(self) -> int:
        """Steps per LAMMPS `run` command during NPT (box lengths are read in between)."""
        return self.sample_every

    @property
    def n_atoms(self) -> int:
        """Atoms in the diamond cell."""
        return 8 * self.supercell**3


def _temperatures(values: Any) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (values,)
    try:
        temps = tuple(float(t) for t in values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"temperatures_K must be numbers (got {values!r})") from exc
    if not temps:
        raise ConfigError("temperatures_K must name at least one temperature")
    for t in temps:
        _check_float("temperatures_K", t, 0.0, MAX_TEMPERATURE_K)
    if len({round(t, 6) for t in temps}) != len(temps):
        raise ConfigError(f"temperatures_K has duplicates ({', '.join(f'{t:g}' for t in temps)})")
    return temps


def _check_float(name: str, value: Any, low: float, high: float, *,
                 inclusive_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if inclusive_low else value > low) and value <= high
    if not ok:
        bound = ">=" if inclusive_low else ">"
        raise ConfigError(f"{name} must be a finite number {bound} {low:g} and <= {high:g} "
                          f"(got {value!r})")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low} (got {value!r})")
