"""Reproducible train/validation/test splits and nested learning-curve subsets (by seed).

Sizes are counts (int) or fractions (float in [0, 1]); a size of None for `train` means
"all the rest". Stratified splits apply the sizes within every stratum (per temperature or
per group): `val=2` with temperature strata puts 2 structures of every temperature into the
validation set. All functions are pure: same input and seed, same output.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from ase import Atoms

from congener.errors import ConfigError, DataError

Size = int | float | None


class Stratify(StrEnum):
    """What a stratified split balances."""

    temperature = "temperature"
    group = "group"


@dataclass(frozen=True)
class Split:
    """Sorted index lists of the three subsets (disjoint)."""

    train: list[int]
    val: list[int]
    test: list[int]

    def take(self, items: Sequence[Any]) -> dict[str, list[Any]]:
        """{"train": [...], "val": [...], "test": [...]} of the items at the indices."""
        return {name: [items[i] for i in getattr(self, name)] for name in ("train", "val", "test")}


NAMES = ("train", "val", "test")


def _count(size: Size, n: int, name: str, nonempty: bool = False) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ConfigError(f"{name} must be a count or a fraction (got {size!r})")
    if isinstance(size, int):
        if size < 0:
            raise ConfigError(f"{name} must be >= 0 (got {size})")
        return size
    if nonempty and size != 0 and not 0.0 < size < 1.0:
        raise ConfigError(f"{name} as a fraction must lie in (0, 1) (got {size}); write a "
                          "count as an integer")
    if not 0.0 <= size <= 1.0:
        raise ConfigError(f"{name} as a fraction must lie in [0, 1] (got {size})")
    return round(size * n)


def subset_counts(
    n: int, *, train: Size, val: Size, test: Size, where: str = "", nonempty: bool = False,
    names: tuple[str, str, str] = NAMES,
) -> tuple[int, int, int]:
    """Counts (train, val, test) for `n` items; `DataError` if they need more than `n`.

    `nonempty`: the sizes come from a user who wants every part asked for: the training part
    (given or the rest) and every non-zero val or test size must give at least one structure
    here (a fraction that rounds to 0 is refused), and fractions must lie in (0, 1).
    `names` name the three sizes in messages (e.g. the command-line options).
    """
    fractions = [(name, x) for name, x in zip(names, (train, val, test), strict=True)
                 if isinstance(x, float)]
    if sum(x for _, x in fractions) > 1.0 + 1e-9:
        given = " + ".join(f"{name} {x:g}" for name, x in fractions)
        raise ConfigError(f"fractions {given} sum to {sum(x for _, x in fractions):g} > 1")
    if nonempty and not isinstance(train, bool) and train is not None and train == 0:
        raise ConfigError(f"{names[0]} {train} asks for an empty training part; give a count "
                          "or a fraction, or leave it out for all the rest")
    n_val = _count(val or 0, n, names[1], nonempty)
    n_test = _count(test or 0, n, names[2], nonempty)
    n_train = n - n_val - n_test if train is None else _count(train, n, names[0], nonempty)
    if isinstance(train, float) and n_train + n_val + n_test > n:
        n_train = n - n_val - n_test  # rounding of fractions that sum to 1
    where = f" in {where}" if where else ""
    if n_train < 0 or n_train + n_val + n_test > n:
        taken = " + ".join(f"{name} {k}" for name, k, size in
                           zip(names, (max(n_train, 0), n_val, n_test), (train, val, test),
                               strict=True) if k or (size is not None and size != 0))
        raise DataError(f"cannot take {taken} from {n} structures{where}")
    if nonempty:
        asked = (train is None or train != 0, val not in (None, 0), test not in (None, 0))
        for name, k, size, wanted in zip(names, (n_train, n_val, n_test), (train, val, test),
                                         asked, strict=True):
            if k == 0 and wanted:
                asked = "all the rest" if size is None else f"{size}"
                raise DataError(f"{name} {asked} gives 0 of the {n} structures{where}"
                                f"{_rounding(size, n)}; ask for at least 1 structure"
                                f"{' per stratum' if where else ''}")
    return n_train, n_val, n_test


def _rounding(size: Size, n: int) -> str:
    if isinstance(size, float):
        return f" ({size:g} x {n} rounds to 0)"
    return ""


def random_split(n: int, *, train: Size = None, val: Size = 0, test: Size = 0,
                 seed: int = 0) -> Split:
    """Random split of indices 0..n-1."""
    return stratified_split([None] * n, train=train, val=val, test=test, seed=seed)


def stratified_split(keys: Sequence[Hashable], *, train: Size = None, val: Size = 0,
                     test: Size = 0, seed: int = 0, nonempty: bool = False,
                     names: tuple[str, str, str] = NAMES) -> Split:
    """Split indices 0..len(keys)-1 with the sizes applied within each stratum (equal keys).
    `nonempty` and `names` as in `subset_counts`, checked in every stratum."""
    rng = np.random.default_rng(seed)
    strata: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        strata.setdefault(key, []).append(i)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for key in sorted(strata, key=_order):
        members = strata[key]
        counts = subset_counts(len(members), train=train, val=val, test=test,
                               where=f"stratum {key}" if key is not None else "",
                               nonempty=nonempty, names=names)
        perm = [members[i] for i in rng.permutation(len(members))]
        bounds = np.cumsum((0, *counts))
        for name, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
            parts[name].extend(perm[lo:hi])
    return Split(**{name: sorted(idx) for name, idx in parts.items()})


def _order(key: Hashable) -> tuple[bool, bool, Any]:
    return (key is None, isinstance(key, str), key if key is not None else 0)


def stratum_keys(structures: Sequence[Atoms], by: Stratify | str) -> list[Hashable]:
    """The stratum of each structure: `info["temperature"]` (K, None if absent) or
    `info["group"]`."""
    try:
        by = Stratify(by)
    except ValueError as exc:
        raise ConfigError(f"cannot stratify by {by!r}; choose temperature or group") from exc
    keys: list[Hashable] = []
    for atoms in structures:
        value = atoms.info.get(by.value)
        keys.append(float(value) if by is Stratify.temperature and value is not None else value)
    return keys


def split_structures(
    structures: Sequence[Atoms],
    *,
    train: Size = None,
    val: Size = 0,
    test: Size = 0,
    seed: int = 0,
    stratify: Stratify | str | None = None,
    nonempty: bool = False,
    names: tuple[str, str, str] = NAMES,
) -> dict[str, list[Atoms]]:
    """Split structures into {"train", "val", "test"}, optionally stratified; `nonempty` and
    `names` as in `subset_counts`."""
    keys = [None] * len(structures) if stratify is None else stratum_keys(structures, stratify)
    split = stratified_split(keys, train=train, val=val, test=test, seed=seed,
                             nonempty=nonempty, names=names)
    return split.take(structures)


def nested_subsets(indices: Sequence[int], sizes: Sequence[int], seed: int = 0
                   ) -> dict[int, list[int]]:
    """Learning-curve subsets of `indices`, each containing every smaller one.

    One seeded permutation is drawn; the subset of size s is its first s entries (sorted).
    """
    indices = list(indices)
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ConfigError(f"subset sizes must be integers >= 1 (got {s!r})")
        if s > len(indices):
            raise DataError(f"subset size {s} exceeds the {len(indices)} available structures")
    perm = [indices[i] for i in np.random.default_rng(seed).permutation(len(indices))]
    return {int(s): sorted(perm[: int(s)]) for s in sorted(set(sizes))}
