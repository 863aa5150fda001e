"""Stillinger-Weber parameter sets: LAMMPS `.sw` files, the shipped Si and Ge sets, and a
matscipy calculator built from them as an implementation independent of LAMMPS.

Energy (LAMMPS `pair_style sw` convention, epsilon in eV, sigma in Å):
    E = sum_{i<j} phi2(r_ij) + sum_i sum_{j<k} phi3(r_ij, r_ik, theta_jik)
    phi2 = A eps (B (sigma/r)^p - (sigma/r)^q) exp(sigma / (r - a sigma))
    phi3 = lambda eps (cos theta - cos theta0)^2
           exp(gamma sigma / (r_ij - a sigma)) exp(gamma sigma / (r_ik - a sigma))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator

from congener.data.structures import atomic_number
from congener.errors import CongenerError, DataError

PARAMS_DIR = Path(__file__).with_name("params")
FIELDS_PER_ENTRY = 14


@dataclass(frozen=True)
class SWParams:
    """One Stillinger-Weber entry for the element triplet (element1, element2, element3).

    epsilon in eV, sigma in Å; a (cutoff in units of sigma), lam (lambda), gamma,
    costheta0, A, B, p, q are dimensionless; tol is LAMMPS' tolerance (unused if 0).
    """

    element1: str
    element2: str
    element3: str
    epsilon: float
    sigma: float
    a: float
    lam: float
    gamma: float
    costheta0: float
    A: float
    B: float
    p: float
    q: float
    tol: float = 0.0

    @property
    def cutoff(self) -> float:
        """Interaction range a·sigma in Å."""
        return self.a * self.sigma

    @property
    def diamond_lattice_constant(self) -> float:
        """Cubic diamond lattice constant in Å with the nearest neighbours at the pair minimum.

        Exact for p = 4, q = 0: the pair minimum is then at r0 = 2^(1/6) sigma and the
        three-body term vanishes at tetrahedral angles.
        """
        return 4.0 * 2.0 ** (1.0 / 6.0) * self.sigma / 3.0**0.5

    def to_line(self) -> str:
        """The entry as one line of a LAMMPS `.sw` file."""
        numbers = (self.epsilon, self.sigma, self.a, self.lam, self.gamma, self.costheta0,
                   self.A, self.B, self.p, self.q, self.tol)
        head = f"{self.element1} {self.element2} {self.element3}"
        return head + " " + " ".join(repr(float(x)) for x in numbers)


def read_sw(path: str | Path) -> dict[tuple[str, str, str], SWParams]:
    """Parse a LAMMPS `.sw` file into entries keyed by element triplet; `DataError` if malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such Stillinger-Weber parameter file: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    tokens = [t for line in text.splitlines() for t in line.split("#", 1)[0].split()]
    if not tokens or len(tokens) % FIELDS_PER_ENTRY:
        raise DataError(
            f"{path}: expected entries of {FIELDS_PER_ENTRY} fields (3 elements, 11 numbers), "
            f"found {len(tokens)} fields"
        )
    entries: dict[tuple[str, str, str], SWParams] = {}
    for start in range(0, len(tokens), FIELDS_PER_ENTRY):
        params = _entry(tokens[start : start + FIELDS_PER_ENTRY], path, start // FIELDS_PER_ENTRY)
        entries[(params.element1, params.element2, params.element3)] = params
    return entries


def _entry(fields: list[str], path: Path, index: int) -> SWParams:
    elements = fields[:3]
    for symbol in elements:
        try:
            atomic_number(symbol)
        except DataError as exc:
            raise DataError(f"{path}: entry {index}: {exc}") from exc
    try:
        numbers = [float(x) for x in fields[3:]]
    except ValueError as exc:
        raise DataError(f"{path}: entry {index} ({' '.join(elements)}): {exc}") from exc
    params = SWParams(*elements, *numbers)
    if params.epsilon <= 0 or params.sigma <= 0 or params.a <= 1:
        raise DataError(
            f"{path}: entry {index} ({' '.join(elements)}) needs epsilon > 0, sigma > 0, a > 1"
        )
    return params


def shipped_params_path(element: str) -> Path:
    """Path of the `.sw` file shipped for `element` (Si, Ge); `DataError` for others."""
    atomic_number(element)
    path = PARAMS_DIR / f"{element}.sw"
    if not path.is_file():
        shipped = sorted(p.stem for p in PARAMS_DIR.glob("*.sw"))
        raise DataError(
            f"no Stillinger-Weber parameters shipped for {element} (shipped: "
            f"{', '.join(shipped)}); pass a .sw file"
        )
    return path


def resolve_params_path(element: str, params_path: str | Path | None = None) -> Path:
    """The `.sw` file to use for `element`: `params_path` if given, else the shipped one."""
    return Path(params_path) if params_path is not None else shipped_params_path(element)


def load_sw_params(element: str, params_path: str | Path | None = None) -> SWParams:
    """The single-element entry (element, element, element) from `params_path` or the shipped
    file; `DataError` if the file lacks it."""
    atomic_number(element)
    path = resolve_params_path(element, params_path)
    entries = read_sw(path)
    key = (element, element, element)
    if key not in entries:
        have = sorted({e for triplet in entries for e in triplet})
        raise DataError(f"{path} has no {element} {element} {element} entry (elements: "
                        f"{', '.join(have)})")
    return entries[key]


def matscipy_sw_calculator(params: SWParams) -> Calculator:
    """matscipy's Stillinger-Weber calculator for one element (independent of LAMMPS).

    matscipy writes the angular term as (cos theta + costheta0)^2, hence the sign flip.
    """
    try:
        from matscipy.calculators.manybody.newmb import Manybody
        from matscipy.calculators.manybody.potentials import (
            StillingerWeberAngle,
            StillingerWeberPair,
        )
        from matscipy.neighbours import CutoffNeighbourhood
    except ImportError as exc:
        raise CongenerError(f"matscipy is needed for this check: {exc}") from exc
    p: dict[str, Any] = {
        "__ref__": "congener SWParams", "el": params.element1, "epsilon": params.epsilon,
        "sigma": params.sigma, "costheta0": -params.costheta0, "A": params.A, "B": params.B,
        "p": params.p, "q": params.q, "a": params.a, "lambda1": params.lam,
        "gamma": params.gamma,
    }
    neighbourhood = CutoffNeighbourhood(cutoff=params.cutoff)
    return Manybody({1: StillingerWeberPair(p)}, {1: StillingerWeberAngle(p)}, neighbourhood)
