"""Other codes' data: label keys (MACE/NequIP REF_* keys, virials) and ASE databases."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

from congener.data.formats import LabelKeys
from congener.data.structures import (
    energy_of,
    forces_of,
    read_structures,
    stress_of,
    write_structures,
)
from congener.errors import ConfigError, DataError
from congener.models.checkpoint import save_potential
from congener.studies.config import study_config
from tests.conftest import small_potential
from tests.test_training import sw_labelled

MACE = LabelKeys(energy="REF_energy", forces="REF_forces", stress="REF_stress")


@pytest.fixture(scope="module")
def labelled():
    return sw_labelled(3, seed=11)


def _mace_file(path, structures, *, virial: bool = False):
    """Write structures the way MACE users store DFT labels (no calculator results)."""
    out = []
    for a in structures:
        b = a.copy()
        b.info["REF_energy"] = energy_of(a)
        b.arrays["REF_forces"] = forces_of(a)
        stress = stress_of(a)
        if virial:
            b.info["REF_virial"] = (-stress * a.get_volume()).ravel()
        else:
            b.info["REF_stress"] = stress.ravel()
        out.append(b)
    ase.io.write(path, out, format="extxyz")


def test_ref_keys_and_virials_read_as_labels(labelled, tmp_path):
    _mace_file(tmp_path / "ref.xyz", labelled)
    _mace_file(tmp_path / "vir.xyz", labelled, virial=True)
    with pytest.raises(DataError, match="REF_energy"):  # ASE's keys alone find nothing
        read_structures(tmp_path / "ref.xyz")
    for path, keys in ((tmp_path / "ref.xyz", MACE),
                       (tmp_path / "vir.xyz", LabelKeys("REF_energy", "REF_forces",
                                                        virial="REF_virial"))):
        got = read_structures(path, keys=keys)
        for a, b in zip(labelled, got, strict=True):
            # (extended XYZ writes per-atom columns with 8 decimals)
            assert energy_of(b) == pytest.approx(energy_of(a), abs=1e-7)
            np.testing.assert_allclose(forces_of(b), forces_of(a), atol=1e-7)
            np.testing.assert_allclose(stress_of(b), stress_of(a), atol=1e-9)
            assert "REF_energy" not in b.info and "REF_forces" not in b.arrays


@pytest.mark.reliability("late", "a mapped label key the file lacks: one line naming it")
def test_missing_mapped_key_is_named(labelled, tmp_path):
    _mace_file(tmp_path / "ref.xyz", labelled)
    with pytest.raises(DataError, match=r"no forces key 'DFT_forces'.*REF_forces"):
        read_structures(tmp_path / "ref.xyz", keys=LabelKeys("REF_energy", "DFT_forces"))
    with pytest.raises(ConfigError, match=r"unknown target\.keys entry 'forcez'"):
        study_config({"target": {"data": "x.xyz", "keys": {"forcez": "F"}}})


def test_ase_database_round_trip(labelled, tmp_path):
    for a in labelled:
        a.info["temperature"] = 600.0
    write_structures(tmp_path / "data.db", labelled)
    back = read_structures(tmp_path / "data.db")
    assert len(back) == len(labelled)
    for a, b in zip(labelled, back, strict=True):
        assert energy_of(b) == energy_of(a)
        np.testing.assert_array_equal(forces_of(b), forces_of(a))
        np.testing.assert_allclose(stress_of(b), stress_of(a), atol=1e-15)
        assert b.info["temperature"] == 600.0 and b.info["group"] == "rattled"


def test_cli_reads_other_keys(labelled, tmp_path, invoke):
    _mace_file(tmp_path / "ref.xyz", labelled)
    save_potential(tmp_path / "m.pt", small_potential(("Si",), cutoff=4.0).float())
    keys = ["--energy-key", "REF_energy", "--forces-key", "REF_forces", "--stress-key",
            "REF_stress"]
    res = invoke("evaluate", tmp_path / "m.pt", tmp_path / "ref.xyz", *keys)
    assert res.exit_code == 0, res.output
    res = invoke("evaluate", tmp_path / "m.pt", tmp_path / "ref.xyz")
    assert res.exit_code == 2 and "REF_energy" in res.output
    res = invoke("train", "--train", tmp_path / "ref.xyz", "--val", tmp_path / "ref.xyz",
                 *keys, "--epochs", 1, "--batch-size", 2, "--cutoff", 4.0, "--stress-weight",
                 0.01, "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output


def test_density_matches_handbook_values_and_scaling_reaches_it():
    """Diamond Ge at a = 5.6579 Å is 5.323 g/cm³ and diamond Si at 5.431 Å is 2.329 g/cm³
    (CRC handbook); scaling Si's cell to 2.329 g/cm³ gives back a = 5.431 Å."""
    import ase.build

    from congener.data.structures import density_g_cm3, scale_to_density

    ge = ase.build.bulk("Ge", "diamond", a=5.6579, cubic=True)
    assert density_g_cm3(ge) == pytest.approx(5.323, rel=1e-3)
    si = ase.build.bulk("Si", "diamond", a=5.0, cubic=True)
    scaled = scale_to_density(si, 2.329)
    assert scaled.cell.lengths() == pytest.approx([5.431] * 3, rel=1e-3)
    assert scaled.get_scaled_positions() == pytest.approx(si.get_scaled_positions())
    assert si.cell.lengths()[0] == 5.0  # the input is left as it was
