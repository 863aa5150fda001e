"""Corresponding-states scaling: exact on DimeNet++, and the fit recovers known scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from congener.data.structures import label
from congener.errors import ConfigError
from congener.testing import predict
from congener.training.scaling import fit_scales, scale_potential
from tests.conftest import rattled_diamond, small_potential


def _stretched(atoms, factor: float):
    out = atoms.copy()
    out.set_cell(atoms.cell * factor, scale_atoms=True)
    return out


def test_scaled_model_is_the_source_at_shrunk_distances():
    """E_scaled(r) = mu E(s r) and F_scaled(r) = mu s F(s r), to float64 rounding."""
    source = small_potential(("Si",), cutoff=4.0)
    source.set_energy_refs({"Si": 0.0})
    s, mu = 0.93, 0.8
    scaled = scale_potential(source, s, mu)
    assert scaled.cutoff == pytest.approx(4.0 / s)
    atoms = rattled_diamond("Si", a=5.43 / s, seed=3, amount=0.2)  # neighbours need 4.0/s
    near = predict(source, _stretched(atoms, s))
    far = predict(scaled, atoms)
    assert float(far.energy[0]) == pytest.approx(mu * float(near.energy[0]), rel=1e-10)
    torch.testing.assert_close(far.forces, mu * s * near.forces, rtol=1e-9, atol=1e-12)
    assert float(near.forces.abs().max()) > 1e-3  # a non-trivial comparison
    # the source is untouched
    assert source.cutoff == 4.0
    assert all(not torch.equal(a, b) for a, b in zip(
        [b.lin.weight for b in source.network.outputs],
        [b.lin.weight for b in scaled.network.outputs], strict=True))


def test_fit_recovers_the_scales_that_made_the_data():
    source = small_potential(("Si",), cutoff=4.0)
    truth = scale_potential(source, 0.94, 0.7)
    data = []
    for seed in range(3):
        atoms = rattled_diamond("Si", a=5.43 / 0.94, seed=seed, amount=0.12)
        p = predict(truth, atoms)
        data.append(label(atoms, energy=float(p.energy[0]), forces=p.forces.numpy()))
    found = fit_scales(source, data, bounds=(0.85, 1.15))
    assert found.length == pytest.approx(0.94, abs=2e-3)
    assert found.energy == pytest.approx(0.7, rel=1e-2)
    assert found.force_mae_after < 0.05 * found.force_mae_before


def test_fit_keeps_the_source_when_no_scale_helps():
    source = small_potential(("Si",), cutoff=4.0)
    data = []
    for seed in range(2):
        atoms = rattled_diamond("Si", seed=seed, amount=0.12)
        p = predict(source, atoms)
        data.append(label(atoms, energy=float(p.energy[0]), forces=p.forces.numpy()))
    found = fit_scales(source, data, bounds=(0.85, 1.15))
    assert found.length == pytest.approx(1.0, abs=2e-3)
    assert found.energy == pytest.approx(1.0, abs=1e-2)
    assert found.force_mae_after <= found.force_mae_before + 1e-12


def test_bad_scales_are_refused():
    source = small_potential(("Si",))
    with pytest.raises(ConfigError, match="length > 0"):
        scale_potential(source, 0.0, 1.0)
    with pytest.raises(ConfigError, match="bounds"):
        fit_scales(source, [rattled_diamond()], bounds=(1.1, 1.3))
    with pytest.raises(ConfigError, match="at least one"):
        fit_scales(source, [])


def test_transfer_cli_with_fitted_scales(tmp_path):
    from congener.cli import main
    from congener.data.structures import write_structures
    from congener.models.checkpoint import load_potential, save_potential

    source = small_potential(("Si",), cutoff=4.0)
    source_path = save_potential(tmp_path / "si.pt", source)
    truth = scale_potential(source, 0.95, 0.8)
    data = []
    for seed in range(4):
        atoms = rattled_diamond("Si", a=5.43 / 0.95, seed=seed, amount=0.12)
        p = predict(truth, atoms)
        ge = atoms.copy()
        ge.symbols = "Ge8"
        data.append(label(ge, energy=float(p.energy[0]) + 8 * 0.5, forces=p.forces.numpy()))
    write_structures(tmp_path / "ge.extxyz", data[:3])
    write_structures(tmp_path / "ge_val.extxyz", data[3:])
    code = main(["transfer", str(source_path), "--map", "Si=Ge", "--scale", "auto",
                 "--train", str(tmp_path / "ge.extxyz"), "--val", str(tmp_path / "ge_val.extxyz"),
                 "--epochs", "1", "--lr", "1e-6", "--lr-final", "1e-6",
                 "-o", str(tmp_path / "run")])
    assert code == 0
    model = load_potential(tmp_path / "run" / "model.pt", dtype=torch.float64)
    assert model.cutoff == pytest.approx(4.0 / 0.95, rel=3e-3)
    assert model.metadata["scales"]["length"] == pytest.approx(0.95, abs=3e-3)
    f = predict(model, data[3]).forces.numpy()
    assert np.abs(f - data[3].get_forces()).mean() < 0.05 * np.abs(data[3].get_forces()).mean()
    code = main(["transfer", str(source_path), "--map", "Si=Ge", "--scale", "0.9",
                 "--train", str(tmp_path / "ge.extxyz"), "-o", str(tmp_path / "bad")])
    assert code != 0


def test_scaled_start_is_kept_only_where_validation_agrees():
    """A fit that helps on validation is kept; scales forced onto a start they make worse on
    validation are refused, and the record says which start was used."""
    from congener.training.scaling import Scales, check_on_validation, scale_potential

    teacher = small_potential(("Si",), cutoff=4.0)
    val = []
    for k in range(3):
        atoms = rattled_diamond("Si", amount=0.1, seed=40 + k)
        out = predict(teacher, atoms)
        val.append(label(atoms, energy=float(out.energy[0]), forces=out.forces.numpy()))
    # the unscaled start is exact on these labels: any real scaling is worse
    worse = check_on_validation(teacher, Scales(0.9, 1.2, 0.0, 0.0), val)
    assert not worse.accepted and worse.applied == (1.0, 1.0)
    assert worse.val_force_mae_before < 1e-10 < worse.val_force_mae_after
    # labels made by a scaled teacher: the same scales on the unscaled start help
    scaled_teacher = scale_potential(teacher, 0.9, 1.2)
    relabelled = []
    for atoms in val:
        out = predict(scaled_teacher, atoms)
        relabelled.append(label(atoms.copy(), energy=float(out.energy[0]),
                                forces=out.forces.numpy()))
    better = check_on_validation(teacher, Scales(0.9, 1.2, 0.0, 0.0), relabelled)
    assert better.accepted and better.applied == (0.9, 1.2)
    assert better.val_force_mae_after < 1e-6 < better.val_force_mae_before
