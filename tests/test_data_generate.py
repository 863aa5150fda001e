"""SW-MD generation through LAMMPS: tiny runs that check labels, temperatures and resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import units

import congener.data.generate as generate
from congener.data.generate import generate_sw_data, run_sw_md, temperature_file
from congener.data.lammps_sw import LammpsSWCalculator
from congener.data.structures import energy_of, forces_of, read_structures, stress_of
from congener.data.sw_protocol import SWProtocol
from congener.errors import ConfigError, DataError

TINY = SWProtocol(temperatures_K=(300.0, 1200.0), timestep_fs=1.0, npt_steps=200,
                  nvt_steps=200, sample_every=50, pdamp_steps=200)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, list]:
    workdir = tmp_path_factory.mktemp("sw") / "work"
    return workdir, generate_sw_data("Ge", TINY, workdir=workdir, seed=1)


def test_samples_are_labelled_and_ordered(generated):
    _, structures = generated
    assert len(structures) == 2 * TINY.n_samples == 8
    assert [a.info["temperature"] for a in structures] == [300.0] * 4 + [1200.0] * 4
    for atoms in structures:
        assert len(atoms) == 64 and set(atoms.get_chemical_symbols()) == {"Ge"}
        assert atoms.info["group"] == "SW-MD" and atoms.info["source"].startswith("SW-MD:Ge:")
        assert stress_of(atoms) is not None and "momenta" in atoms.arrays
        # mom yes: the centre of mass does not move.
        assert np.abs(atoms.get_momenta().sum(axis=0)).max() < 1e-6
    # Momenta survive the extended-XYZ round trip in ASE units (LAMMPS stores Å/ps).
    assert 700 < np.mean([a.get_temperature() for a in structures[4:]]) < 1700
    hot = np.mean([energy_of(a) for a in structures[4:]])
    cold = np.mean([energy_of(a) for a in structures[:4]])
    assert hot > cold + 64 * 1.5 * units.kB * 600  # at least half of equipartition's rise


def test_stored_frames_match_a_fresh_lammps_evaluation(generated):
    # Positions in extended XYZ carry 8 decimals, so the stored labels are compared with a
    # LAMMPS evaluation of the re-read positions: differences of ~1e-7 are rounding. The
    # static calculator has no kinetic stress term (N k T / V ~ 5e-3 eV/Å³ at 1200 K), so the
    # stress match at 1e-9 also shows that the label is the virial part only.
    workdir, _ = generated
    calc = LammpsSWCalculator("Ge")
    for atoms in read_structures(temperature_file(workdir, 1200.0)):
        fresh = atoms.copy()
        fresh.calc = calc
        assert fresh.get_potential_energy() == pytest.approx(energy_of(atoms), abs=1e-6)
        np.testing.assert_allclose(fresh.get_forces(), forces_of(atoms), atol=1e-6)
        np.testing.assert_allclose(fresh.get_stress(voigt=False), stress_of(atoms), atol=1e-9)


def test_nvt_samples_have_the_target_temperature_and_zero_total_pressure():
    protocol = SWProtocol(temperatures_K=(900.0,), timestep_fs=1.0, npt_steps=5000,
                          nvt_steps=3000, sample_every=100)
    samples = run_sw_md("Si", protocol, 900.0, seed=4)
    temps = np.array([a.get_temperature() for a in samples])  # from the stored momenta
    assert len(temps) == 30
    assert temps.mean() == pytest.approx(900.0, rel=0.08)
    # Canonical fluctuations of 64 atoms: std(T)/T = sqrt(2/(3N)) ~ 0.1.
    assert 0.03 < temps.std() / 900.0 < 0.25
    # The stress label is the virial part only: at the NPT volume (zero total pressure) the
    # virial pressure balances the kinetic one, N k T / V ~ 0.6 GPa here.
    virial = np.mean([-np.trace(stress_of(a)) / 3 for a in samples]) / units.GPa
    kinetic = np.mean([len(a) * units.kB * a.get_temperature() / a.get_volume()
                       for a in samples]) / units.GPa
    assert virial < -0.3
    assert abs(virial + kinetic) < 0.25


def test_resume_skips_finished_temperatures_and_is_reproducible(tmp_path, monkeypatch):
    protocol = TINY.with_overrides(temperatures_K=(300.0, 600.0), npt_steps=100)
    first = generate_sw_data("Si", protocol, workdir=tmp_path, seed=2)
    temperature_file(tmp_path, 600.0).unlink()
    ran = []
    original = generate._run
    monkeypatch.setattr(generate, "_run", lambda job: ran.append(job.temperature_K)
                        or original(job))
    seen = []
    again = generate_sw_data("Si", protocol, workdir=tmp_path, seed=2,
                             progress=lambda t, n: seen.append((t, n)))
    assert ran == [600.0] and sorted(seen) == [(300.0, 4), (600.0, 4)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert energy_of(a) == energy_of(b)
    with pytest.raises(DataError, match="other settings"):
        generate_sw_data("Si", protocol, workdir=tmp_path, seed=3)


def test_parallel_workers_give_the_same_data(tmp_path):
    protocol = TINY.with_overrides(npt_steps=100, nvt_steps=100)
    serial = generate_sw_data("Si", protocol, workdir=tmp_path / "a", seed=5, workers=1)
    parallel = generate_sw_data("Si", protocol, workdir=tmp_path / "b", seed=5, workers=2)
    assert [energy_of(a) for a in serial] == [energy_of(a) for a in parallel]


def test_protocol_presets_and_validation():
    paper, quick = SWProtocol.paper(), SWProtocol.quick()
    assert len(paper.temperatures_K) == 34 and paper.temperatures_K[::33] == (300.0, 3600.0)
    assert (paper.npt_steps, paper.nvt_steps, paper.sample_every) == (4_000_000, 1_000_000,
                                                                       1000)
    assert 10 <= quick.n_samples <= 20 and min(quick.temperatures_K) == 300.0
    assert max(quick.temperatures_K) == 3600.0
    assert quick.with_overrides(npt_steps=5, nvt_steps=None).npt_steps == 5
    assert SWProtocol.preset("paper") == paper
    for bad, message in [({"temperatures_K": (300.0, -5.0)}, "temperatures_K"),
                         ({"temperatures_K": ()}, "at least one"),
                         ({"temperatures_K": (300.0, 300.0)}, "duplicates"),
                         ({"temperatures_K": (float("nan"),)}, "temperatures_K"),
                         ({"npt_steps": -1}, "npt_steps"), ({"nvt_steps": 0}, "nvt_steps"),
                         ({"sample_every": 10**9}, "must not exceed"),
                         ({"timestep_fs": 0.0}, "timestep_fs"), ({"npt_steps": 1.5}, "integer"),
                         ({"bogus": 1}, "unknown protocol field")]:
        with pytest.raises(ConfigError, match=message):
            quick.with_overrides(**bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        SWProtocol.preset("huge")


def test_bad_element_or_parameters(tmp_path):
    with pytest.raises(DataError, match="unknown element"):
        generate_sw_data("Xx", TINY, workdir=tmp_path)
    with pytest.raises(DataError, match="no Stillinger-Weber parameters shipped for Sn"):
        generate_sw_data("Sn", TINY, workdir=tmp_path)
    with pytest.raises(ConfigError, match="workers"):
        generate_sw_data("Si", TINY, workdir=tmp_path, workers=0)
