"""Elemental energy referencing (Huang et al. 2025): refit, train and keep the per-element
reference energies, on labels made by a known model with known per-element shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from congener.data.structures import label
from congener.errors import ConfigError
from congener.testing import predict
from congener.training import LabelledSet, TrainConfig, fit
from congener.training.refs import fit_energy_refs
from congener.training.transfer import freeze
from tests.conftest import rattled_diamond, small_potential

SHIFT = {"Si": 0.137, "Ge": -0.291}  # eV/atom added to the teacher's labels


def shifted_labels(teacher, n: int = 6, seed: int = 0):
    """SiGe cells of varied composition labelled by `teacher` plus SHIFT per atom."""
    out = []
    rng = np.random.default_rng(seed)
    for k in range(n):
        atoms = rattled_diamond("Si", amount=0.1, seed=seed + k, shear=0.05 * (k % 3))
        ge = rng.choice(len(atoms), size=k + 1, replace=False)
        atoms.numbers[ge] = 32
        pred = predict(teacher, atoms)
        shift = sum(SHIFT[s] for s in atoms.get_chemical_symbols())
        out.append(label(atoms, energy=float(pred.energy[0]) + shift,
                         forces=pred.forces.detach().numpy()))
    return out


def test_refit_recovers_an_exact_per_element_shift():
    teacher = small_potential(("Si", "Ge"), cutoff=4.0)
    data = LabelledSet(shifted_labels(teacher), 4.0)
    before = teacher.get_energy_refs()
    refs = fit_energy_refs(teacher, data)
    for element, shift in SHIFT.items():
        assert refs[element] == pytest.approx(before[element] + shift, abs=1e-9)


def test_keep_leaves_the_references_and_refit_corrects_them():
    teacher = small_potential(("Si", "Ge"), cutoff=4.0)
    structures = shifted_labels(teacher, n=8)
    truth = {e: teacher.get_energy_refs()[e] + SHIFT[e] for e in SHIFT}
    train, val = LabelledSet(structures[:6], 4.0), LabelledSet(structures[6:], 4.0)
    base = dict(epochs=2, batch_size=3, lr=1e-2, lr_final=1e-2, energy_weight=1.0, seed=0,
                dtype="float64")
    for refs in ("keep", "refit"):
        pot = small_potential(("Si", "Ge"), cutoff=4.0)
        freeze(pot, ["interactions"])  # some weights move, the references decide the rest
        start = pot.get_energy_refs()
        fit(pot, train, val, TrainConfig(**base, refs=refs))
        if refs == "keep":
            assert pot.get_energy_refs() == start  # bit for bit
        else:  # refitted to the trained weights: near the truth, far from the start
            got = pot.get_energy_refs()
            for element in SHIFT:
                assert abs(got[element] - truth[element]) < abs(start[element] - truth[element])


def test_train_moves_references_away_from_a_perturbed_fit():
    """After the initial least-squares fit, perturb the references: training must bring them
    back (a check that the loss reaches them, not only the initial fit)."""
    from congener.training import trainer

    teacher = small_potential(("Si", "Ge"), cutoff=4.0)
    train = LabelledSet(shifted_labels(teacher, n=6), 4.0)
    pot = small_potential(("Si", "Ge"), cutoff=4.0)
    freeze(pot, ["network.*"])
    truth = {e: teacher.get_energy_refs()[e] + SHIFT[e] for e in SHIFT}
    cfg = TrainConfig(epochs=40, batch_size=3, lr=5e-3, lr_final=5e-3, energy_weight=1.0,
                      dtype="float64", refs="train")
    original = trainer.fit_energy_refs

    def perturbed(potential, data):  # the initial fit, then 50 meV off
        refs = original(potential, data)
        potential.set_energy_refs({e: v + 0.05 for e, v in refs.items()})
        return refs

    trainer.fit_energy_refs = perturbed
    try:
        fit(pot, train, train, cfg)
    finally:
        trainer.fit_energy_refs = original
    refs = pot.get_energy_refs()
    for element in SHIFT:
        assert abs(refs[element] - truth[element]) < 0.01, (element, refs[element], truth)


def test_refs_modes_are_validated():
    with pytest.raises(ConfigError, match=r"train\.refs must be"):
        TrainConfig(refs="fit")
    with pytest.raises(ConfigError, match="energy_weight > 0"):
        TrainConfig(refs="train")
    assert torch.float64 == small_potential().energy_refs.dtype
