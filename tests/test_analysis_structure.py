"""RDF, ADF, first peak and coordination of crystals with known answers."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest

from congener.analysis.structure import (
    LIQUID_GE_1273K,
    adf,
    bond_angles,
    coordination_number,
    first_minimum,
    first_peak,
    rdf,
    structure_stats,
)
from congener.errors import DataError


@pytest.mark.parametrize("reps", [1, 2])
def test_diamond_rdf_first_peak_and_coordination(reps):
    a = 5.658
    atoms = ase.build.bulk("Ge", "diamond", a=a, cubic=True) * (reps, reps, reps)
    g = rdf([atoms], r_max_A=7.0, bin_A=0.02)
    assert first_peak(g) == pytest.approx(a * np.sqrt(3) / 4, abs=0.01)
    assert a * np.sqrt(3) / 4 < first_minimum(g) < a / np.sqrt(2)  # before the 2nd shell
    assert coordination_number(g) == pytest.approx(4.0, abs=1e-9)
    assert coordination_number(g, 6.9) == pytest.approx(4 + 12 + 12 + 6 + 12, abs=1e-9)
    assert g.density == pytest.approx(8 / a**3)


def test_diamond_adf_peaks_at_tetrahedral_angle():
    atoms = ase.build.bulk("Ge", "diamond", a=5.658, cubic=True)
    angles = bond_angles(atoms, 3.0)
    assert angles.size == 8 * 6  # 4 neighbours -> 6 pairs per atom
    np.testing.assert_allclose(angles, np.degrees(np.arccos(-1 / 3)), atol=1e-8)
    dist = adf([atoms], r_cut_A=3.0, bin_deg=1.0)
    assert abs(dist.angle_deg[np.argmax(dist.p)] - 109.47) < 0.5
    assert np.trapezoid(dist.p, dist.angle_deg) == pytest.approx(1.0)


def test_rdf_of_ideal_gas_tends_to_one():
    rng = np.random.default_rng(0)
    frames = [ase.Atoms("Ar" * 200, positions=rng.uniform(0, 12, (200, 3)), cell=[12] * 3,
                        pbc=True) for _ in range(5)]
    g = rdf(frames, r_max_A=5.0, bin_A=0.25)
    assert abs(g.g[g.r_A > 2].mean() - 1.0) < 0.05


def test_structure_stats_mean_and_std_over_trajectories():
    atoms = ase.build.bulk("Ge", "diamond", a=5.658, cubic=True)
    rattled = atoms.copy()
    rattled.rattle(0.05, seed=1)
    stats = structure_stats([[atoms, atoms], [rattled], []], r_max_A=5.0)
    assert stats.n_trajectories == 2
    assert stats.g_std.max() > 0 and stats.peak_A[0] == pytest.approx(2.45, abs=0.03)
    assert stats.coordination[0] == pytest.approx(4.0, abs=1e-6)
    with pytest.raises(DataError):
        structure_stats([[]])


def test_fcc_rdf_shells():
    """fcc: 12 neighbours at a/sqrt(2), 6 more at a, 24 more at a sqrt(3/2)."""
    a = 3.61
    atoms = ase.build.bulk("Cu", "fcc", a=a, cubic=True) * (3, 3, 3)
    g = rdf([atoms], r_max_A=5.0, bin_A=0.02)
    assert first_peak(g) == pytest.approx(a / np.sqrt(2), abs=0.01)
    assert coordination_number(g) == pytest.approx(12.0, abs=1e-9)
    assert coordination_number(g, 0.5 * (a + a * np.sqrt(1.5))) == pytest.approx(18, abs=1e-9)
    assert coordination_number(g, 4.9) == pytest.approx(42, abs=1e-9)


def test_structure_plot_marks_the_liquid_ge_experiment(tmp_path):
    """The liquid-Ge reference (Salmon 1988) reaches the RDF plot: the plot with it differs."""
    from congener.analysis.plots import plot_structure

    atoms = ase.build.bulk("Ge", "diamond", a=5.658, cubic=True)
    stats = structure_stats([[atoms]], r_max_A=5.0)
    plot_structure({"model": stats}, tmp_path / "a.png", experiment=LIQUID_GE_1273K)
    plot_structure({"model": stats}, tmp_path / "b.png", experiment=None)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
