"""Splits: reproducible by seed, disjoint, stratified, nested."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from congener.data.split import (
    nested_subsets,
    random_split,
    split_structures,
    stratified_split,
    stratum_keys,
    subset_counts,
)
from congener.errors import ConfigError, DataError


def _structures() -> list[Atoms]:
    out = []
    for k in range(30):
        atoms = Atoms("Si", positions=[[0, 0, 0]], cell=[3, 3, 3], pbc=True)
        atoms.info["temperature"] = [300.0, 600.0, 900.0][k % 3]
        atoms.info["group"] = "AIMD" if k < 24 else "Elastic"
        atoms.info["index"] = k
        out.append(atoms)
    for atoms in out[24:]:
        del atoms.info["temperature"]
    return out


def test_random_split_is_reproducible_disjoint_and_complete():
    a = random_split(50, val=5, test=0.2, seed=3)
    assert a == random_split(50, val=5, test=0.2, seed=3)
    assert a != random_split(50, val=5, test=0.2, seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (35, 5, 10)
    assert sorted(a.train + a.val + a.test) == list(range(50))
    b = random_split(50, train=10, val=5, test=5, seed=3)
    assert len(b.train) == 10 and not set(b.train) & set(b.val + b.test)


def test_counts_and_fractions():
    assert subset_counts(10, train=None, val=2, test=0.3) == (5, 2, 3)
    assert subset_counts(7, train=0.8, val=0.1, test=0.1) == (5, 1, 1)
    with pytest.raises(DataError, match="cannot take"):
        subset_counts(10, train=8, val=2, test=1)
    with pytest.raises(ConfigError, match="sum to"):
        subset_counts(10, train=0.8, val=0.3, test=0.0)
    with pytest.raises(ConfigError, match=">= 0"):
        subset_counts(10, train=None, val=-1, test=0)
    with pytest.raises(ConfigError, match="fraction"):
        subset_counts(10, train=None, val=1.5, test=0)


def test_stratified_split_takes_n_per_temperature():
    structures = _structures()
    keys = stratum_keys(structures, "temperature")
    split = stratified_split(keys, val=2, test=1, seed=0)
    for part, n in (("val", 2), ("test", 1)):
        temps = [keys[i] for i in getattr(split, part)]
        assert sorted(temps, key=str) == sorted([300.0, 600.0, 900.0, None] * n, key=str)
    with pytest.raises(DataError, match="stratum 300"):
        stratified_split(keys, val=8, test=2, seed=0)


def test_split_structures_by_group_keeps_objects():
    parts = split_structures(_structures(), train=4, val=1, test=1, seed=9, stratify="group")
    groups = [a.info["group"] for a in parts["train"]]
    assert groups.count("AIMD") == 4 and groups.count("Elastic") == 4
    again = split_structures(_structures(), train=4, val=1, test=1, seed=9, stratify="group")
    assert [a.info["index"] for a in parts["train"]] == [a.info["index"] for a in again["train"]]
    with pytest.raises(ConfigError, match="cannot stratify"):
        split_structures(_structures(), stratify="colour")


def test_nested_subsets_contain_each_other():
    pool = list(range(100, 160))
    subsets = nested_subsets(pool, [50, 1, 10, 5], seed=7)
    assert list(subsets) == [1, 5, 10, 50]
    for small, large in [(1, 5), (5, 10), (10, 50)]:
        assert set(subsets[small]) < set(subsets[large])
    assert all(set(s) <= set(pool) and len(s) == n for n, s in subsets.items())
    assert subsets == nested_subsets(pool, [1, 5, 10, 50], seed=7)
    others = [nested_subsets(pool, [10], seed=s)[10] for s in range(5)]
    assert len({tuple(o) for o in others}) > 1
    # Each index is about equally likely to be drawn.
    counts = np.bincount([i for s in range(400) for i in nested_subsets(range(6), [1], s)[1]])
    assert counts.min() > 40
    with pytest.raises(DataError, match="exceeds"):
        nested_subsets(pool, [61])
    with pytest.raises(ConfigError, match=">= 1"):
        nested_subsets(pool, [0])
