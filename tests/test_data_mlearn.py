"""mlearn reader: handmade JSON in the test; the shared copy only under the `data` mark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import units

from congener.data.mlearn import (
    read_mlearn,
    read_mlearn_splits,
    temperature_from_description,
    virial_to_stress,
)
from congener.data.structures import (
    energy_of,
    forces_of,
    read_structures,
    stress_of,
    write_structures,
)
from congener.errors import DataError

MLEARN = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn"
GPA = units.GPa


def _entry(n: int, *, group: str, description: str, shift: float = 0.0,
           virial=(10.0, 20.0, 30.0, 1.0, 2.0, 3.0)) -> dict:
    rng = np.random.default_rng(n)
    tilt = np.array([[0, 0, 0], [0.3, 0, 0], [0.1, -0.2, 0]])
    matrix = (np.diag([5.4, 5.5, 5.6]) + tilt).tolist()
    abc = rng.random((n, 3))
    sites = [{"species": [{"element": "Ge", "occu": 1}], "abc": list(f),
              "xyz": list(f @ np.array(matrix)), "label": "Ge"} for f in abc]
    return {
        "structure": {"@module": "pymatgen.core.structure", "@class": "Structure",
                      "charge": None, "lattice": {"matrix": matrix}, "sites": sites},
        "outputs": {"energy": -4.0 * n + shift, "forces": rng.normal(size=(n, 3)).tolist(),
                    "virial_stress": list(virial)},
        "num_atoms": n, "element": "Ge", "group": group, "description": description,
    }


def _entries() -> list[dict]:
    return [
        _entry(4, group="AIMD-NVT", description="Snapshot 3 of 20 of AIMD NVT simulation for "
               "normal structure at 1089 K"),
        _entry(3, group="Surface", description="Ge_surface_mp/Ge_mp-32_(1_1_1)"),
        _entry(5, group="Elastic", description="Ge 2x2x2 cell, mode 0, strain -0.02"),
    ]


@pytest.fixture
def mlearn_file(tmp_path: Path) -> Path:
    path = tmp_path / "Ge" / "training.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_entries()))
    return path


def test_virial_kbar_to_ase_stress_sign_order_and_unit():
    # VASP [xx yy zz xy yz xz], compressive-positive kbar -> ASE [xx yy zz yz xz xy] eV/Å³.
    stress = virial_to_stress([10.0, 20.0, 30.0, 1.0, 2.0, 3.0])
    expected_gpa = -0.1 * np.array([10.0, 20.0, 30.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(stress / GPA, expected_gpa, rtol=1e-12)
    assert stress[0] < 0  # 10 kbar of pressure is compressive: negative ASE stress


def test_temperature_parsed_from_description():
    assert temperature_from_description("Snapshot 8 of 40 of Vacancy AIMD NVT simulation "
                                        "at 300 K") == 300.0
    assert temperature_from_description("... for normal structure at 2422.5 K") == 2422.5
    assert temperature_from_description("Ge 2x2x2 cell, mode 0, strain -0.02") is None
    assert temperature_from_description("Ground state crystal") is None


def test_reads_entries_with_labels_and_metadata(mlearn_file: Path):
    entries = _entries()
    structures = read_mlearn(mlearn_file)
    assert [len(a) for a in structures] == [4, 3, 5]
    for k, (atoms, entry) in enumerate(zip(structures, entries, strict=True)):
        np.testing.assert_allclose(atoms.cell.array, entry["structure"]["lattice"]["matrix"])
        xyz = [s["xyz"] for s in entry["structure"]["sites"]]
        np.testing.assert_allclose(atoms.positions, xyz)
        assert energy_of(atoms) == entry["outputs"]["energy"]
        np.testing.assert_allclose(forces_of(atoms), entry["outputs"]["forces"])
        assert atoms.pbc.all() and set(atoms.get_chemical_symbols()) == {"Ge"}
        assert atoms.info["group"] == entry["group"]
        assert atoms.info["source"] == f"mlearn:Ge/training.json:{k}"
    assert structures[0].info["temperature"] == 1089.0
    assert "temperature" not in structures[2].info
    sigma = stress_of(structures[2])
    assert sigma is not None and np.allclose(sigma, sigma.T)
    np.testing.assert_allclose(sigma[0, 1] / GPA, -0.1 * 1.0)  # VASP index 3 is xy
    np.testing.assert_allclose(sigma[1, 2] / GPA, -0.1 * 2.0)  # VASP index 4 is yz
    np.testing.assert_allclose(sigma[0, 2] / GPA, -0.1 * 3.0)  # VASP index 5 is xz


def test_surfaces_can_be_dropped(mlearn_file: Path):
    groups = [a.info["group"] for a in read_mlearn(mlearn_file, surfaces=False)]
    assert groups == ["AIMD-NVT", "Elastic"]


def test_extxyz_round_trip_keeps_every_field(mlearn_file: Path, tmp_path: Path):
    structures = read_mlearn(mlearn_file)
    back = read_structures(write_structures(tmp_path / "out.extxyz", structures))
    for a, b in zip(structures, back, strict=True):
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-8)
        np.testing.assert_allclose(b.cell.array, a.cell.array, atol=1e-8)
        assert energy_of(b) == pytest.approx(energy_of(a), abs=1e-10)
        np.testing.assert_allclose(forces_of(b), forces_of(a), atol=1e-8)
        np.testing.assert_allclose(stress_of(b), stress_of(a), atol=1e-10)
        for key in ("group", "source", "description", "temperature"):
            assert b.info.get(key) == a.info.get(key)


def test_folder_needs_a_split_and_reads_both(mlearn_file: Path):
    folder = mlearn_file.parent
    (folder / "test.json").write_text(json.dumps(_entries()[:1]))
    with pytest.raises(DataError, match="split"):
        read_mlearn(folder)
    splits = read_mlearn_splits(folder, surfaces=False)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "test": 1}
    assert read_mlearn(folder, split="test")[0].info["source"] == "mlearn:Ge/test.json:0"
    with pytest.raises(DataError, match="unknown split"):
        read_mlearn(folder, split="validation")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e[1]["outputs"].pop("forces"), "entry 1 lacks key 'outputs.forces'"),
        (lambda e: e[2].pop("structure"), "entry 2 lacks key 'structure'"),
        (lambda e: e[0]["outputs"].update(forces=[[0.0, 0.0, 0.0]]), "entry 0: forces"),
        (lambda e: e[0]["outputs"].update(virial_stress=[1, 2]), "entry 0: virial_stress"),
        (lambda e: e[1]["structure"]["sites"][0]["species"][0].update(element="Xx"),
         "entry 1: unknown element"),
        (lambda e: e[1]["structure"]["sites"][0]["species"][0].update(occu=0.5),
         "entry 1: site 0 is disordered"),
        (lambda e: e.append(3), "entry 3 is not a JSON object"),
    ],
)
def test_malformed_entries_name_the_entry(tmp_path: Path, mutate, message):
    entries = _entries()
    mutate(entries)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=message):
        read_mlearn(path)


def test_malformed_files(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        read_mlearn(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('[{"structure": ')
    with pytest.raises(DataError, match=r"cannot read .* as JSON"):
        read_mlearn(tmp_path / "broken.json")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(DataError, match="expected a JSON list"):
        read_mlearn(tmp_path / "dict.json")


@pytest.mark.data
@pytest.mark.skipif(not MLEARN.is_dir(), reason="needs ../shared/data/mlearn")
@pytest.mark.parametrize(("element", "n_train", "n_test"), [("Ge", 217, 24), ("Si", 202, 23)])
def test_shared_mlearn_counts_and_stress_sign(element: str, n_train: int, n_test: int):
    splits = read_mlearn_splits(MLEARN / element, surfaces=False)
    assert (len(splits["train"]), len(splits["test"])) == (n_train, n_test)
    elastic = {a.info["description"]: a for a in splits["train"] if a.info["group"] == "Elastic"}
    squeezed = elastic[f"{element} 2x2x2 cell, mode 0, strain -0.02"]
    stretched = elastic[f"{element} 2x2x2 cell, mode 0, strain 0.02"]
    assert squeezed.cell[0, 0] < stretched.cell[0, 0]
    # Compression along x gives a compressive (negative, ASE sign) xx stress, and going from
    # -2 % to +2 % strain raises it by ~C11·0.04 (C11 ~ 130-160 GPa). The Ge ground state is
    # itself compressed by ~1 GPa in this data (README), so only the difference is symmetric.
    assert stress_of(squeezed)[0, 0] / GPA < -2.0
    assert 4.0 < (stress_of(stretched)[0, 0] - stress_of(squeezed)[0, 0]) / GPA < 8.0
    # A positive xy shear (mode 3: b gets an x component) gives a positive xy stress.
    sheared = elastic[f"{element} 2x2x2 cell, mode 3, strain 0.04"]
    assert sheared.cell[1, 0] > 0 and stress_of(sheared)[0, 1] > 0
