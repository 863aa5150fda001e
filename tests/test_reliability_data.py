"""Issue 20, data side: bad structures and sizes give a clear answer, never a silent wrong one.

Non-finite predictions in `evaluate`, overlapping atoms in `data info`, split sizes that leave
a part empty, and structure files that hold no usable labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.build
import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from congener.analysis.errors import Evaluation, metrics
from congener.data.structures import label, read_structures, shortest_distance, write_structures
from congener.errors import DataError
from congener.models.checkpoint import save_potential
from tests.conftest import rattled_diamond, small_potential


def _labelled(n: int, overlap: tuple[int, ...] = (), temperatures=(None,)) -> list[Atoms]:
    """n rattled 8-atom Si cells labelled with zero forces (no stress); in the structures
    `overlap`, atom 3 sits exactly on atom 2."""
    out = []
    for k in range(n):
        atoms = rattled_diamond(seed=k)
        if k in overlap:
            atoms.positions[3] = atoms.positions[2]
        out.append(label(atoms, energy=-4.5 * len(atoms), forces=np.zeros((len(atoms), 3)),
                         group="rattled", temperature=temperatures[k % len(temperatures)]))
    return out


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_potential(tmp_path / "model.pt", small_potential())


# --- A: non-finite predictions, overlapping atoms ------------------------------------------

@pytest.mark.reliability("silent", "evaluate names the structures with non-finite predictions "
                         "(file and index), leaves them out of the means with a count, and "
                         "writes strict JSON (null for NaN)")
def test_evaluate_leaves_out_nonfinite_structures(tmp_path, invoke, model):
    write_structures(tmp_path / "a.extxyz", _labelled(2))
    write_structures(tmp_path / "b.extxyz", _labelled(3, overlap=(1,)))
    res = invoke("evaluate", model, tmp_path / "a.extxyz", tmp_path / "b.extxyz",
                 "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.err
    assert res.err.count("warning:") == 1
    assert f"{tmp_path / 'b.extxyz'} structure 1" in res.err and "1 of 5 structures" in res.err
    assert "left out of the means: 1 structure" in res.out
    table = {line.split()[0]: line.split() for line in res.out.splitlines()
             if line.split() and line.split()[0] in ("all", "rattled")}
    assert table["all"][1] == "4" and table["all"][-1] == "1"  # n in the means, left out
    assert np.isfinite(float(table["all"][2]))  # energy MAE over the finite structures
    rows = _strict_json((tmp_path / "m.json").read_text())
    assert rows["all"]["n"] == 4 and rows["all"]["n_nonfinite"] == 1
    assert rows["all"]["energy_mae"] > 0 and rows["all"]["stress_mae"] is None  # no stress
    assert rows["nonfinite_structures"] == [{"file": str(tmp_path / "b.extxyz"), "index": 1}]


@pytest.mark.reliability("silent", "evaluate on data whose every prediction is non-finite is "
                         "one error line naming the structures, exit 2, no JSON written")
def test_evaluate_with_no_finite_prediction_is_an_error(tmp_path, invoke, model):
    write_structures(tmp_path / "bad.extxyz", _labelled(2, overlap=(0, 1)))
    res = invoke("evaluate", model, tmp_path / "bad.extxyz", "--json", tmp_path / "m.json")
    assert res.exit_code == 2
    assert res.err.startswith("error: all 2 of 2 structures") and res.err.count("\n") == 1
    assert "bad.extxyz structure 0" in res.err and "bad.extxyz structure 1" in res.err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.reliability("silent", "metrics leave structures with non-finite errors out of the "
                         "means and count them in n_nonfinite, per group too")
def test_metrics_leave_out_nonfinite_structures():
    ev = Evaluation(energy_error=np.array([2e-3, np.nan, -4e-3]),
                    force_error=np.array([[0.1, 0, 0], [0, 0.2, 0], [np.inf, 0, 0], [0, 0, 0.3]]),
                    stress_error=np.full((3, 3, 3), np.nan),
                    atom_structure=np.array([0, 0, 1, 2]), groups=["a", "a", "b"],
                    temperatures=np.full(3, np.nan), e_ref=np.zeros(3), e_pred=np.zeros(3),
                    f_ref=np.zeros((4, 3)), f_pred=np.zeros((4, 3)))
    assert ev.finite.tolist() == [True, False, True]
    m = metrics(ev)
    assert (m["n"], m["n_nonfinite"]) == (2, 1)
    assert np.isclose(m["energy_mae"], 3.0) and np.isclose(m["energy_bias"], -1.0)
    assert np.isclose(m["force_mae"], 0.6 / 9)  # atoms 0, 1 and 3
    only_a = metrics(ev, np.array([True, True, False]))
    assert (only_a["n"], only_a["n_nonfinite"]) == (1, 1)
    assert np.isclose(only_a["energy_mae"], 2.0)


@pytest.mark.reliability("late", "data info prints the shortest interatomic distance with its "
                         "structure and flags every structure with atoms closer than "
                         "--min-distance (default 0.5 Å)")
def test_data_info_flags_overlapping_atoms(tmp_path, invoke):
    structures = _labelled(4, overlap=(2,))
    structures[3].positions[5] = structures[3].positions[4] + [0.3, 0, 0]
    write_structures(tmp_path / "d.extxyz", structures)
    res = invoke("data", "info", tmp_path / "d.extxyz")
    assert res.exit_code == 0, res.err
    assert "shortest interatomic distance: 0.000 Å (structure 2)" in res.out
    assert "2 structure(s) with atoms closer than 0.5 Å" in res.out
    assert "2 (0.000 Å), 3 (0.300 Å)" in res.out
    res = invoke("data", "info", tmp_path / "d.extxyz", "--min-distance", 0.2)
    assert res.exit_code == 0 and "1 structure(s) with atoms closer than 0.2 Å" in res.out
    res = invoke("data", "info", tmp_path / "d.extxyz", "--min-distance", -1)
    assert res.exit_code == 2 and "--min-distance" in res.err
    write_structures(tmp_path / "ok.extxyz", _labelled(2))
    res = invoke("data", "info", tmp_path / "ok.extxyz")
    assert res.exit_code == 0 and "closer than" not in res.out


@pytest.mark.reliability("late", "shortest_distance(atoms) counts periodic images and an "
                         "atom's own image; inf for a lone atom in free space")
def test_shortest_distance_counts_periodic_images():
    assert shortest_distance(Atoms("Si")) == np.inf
    assert np.isclose(shortest_distance(Atoms("Si", cell=[3.0, 4.0, 5.0], pbc=True)), 3.0)
    pair = Atoms("Si2", positions=[[0, 0, 0.1], [0, 0, 2.9]], cell=3.0 * np.eye(3), pbc=True)
    assert np.isclose(shortest_distance(pair), 0.2)  # through the image, not 2.8
    pair.pbc = False
    assert np.isclose(shortest_distance(pair), 2.8)
    assert np.isclose(shortest_distance(Atoms("Si2", positions=[[0, 0, 0], [0, 0, 40]])), 40.0)
    bulk = ase.build.bulk("Si", "diamond", a=5.43)
    assert np.isclose(shortest_distance(bulk), 5.43 * np.sqrt(3) / 4)
    slab = ase.build.fcc111("Al", (2, 2, 3), a=4.05, vacuum=None)  # zero third cell vector
    slab.pbc, slab.cell[2] = (True, True, False), 0.0
    assert np.isclose(shortest_distance(slab), 4.05 / np.sqrt(2))
    assert shortest_distance(_labelled(1, overlap=(0,))[0]) == 0.0


# --- B: split sizes -------------------------------------------------------------------------

@pytest.mark.reliability("silent", "data split refuses a part that would be empty (also per "
                         "stratum) or a size out of range, in one line naming the option")
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--train", "0", "--val", "2"], "--train 0 asks for an empty training part"),
        (["--train", "0.0"], "--train 0.0 asks for an empty training part"),
        (["--val", "1.0"], "--val as a fraction must lie in (0, 1)"),
        (["--val", "0.5", "--test", "0.5"], "--train all the rest gives 0 of the 6"),
        (["--val", "0.05"], "--val 0.05 gives 0 of the 6 structures (0.05 x 6 rounds to 0)"),
        (["--val", "-1"], "--val must be >= 0"),
        (["--test", "-0.2"], "--test as a fraction must lie in (0, 1)"),
        (["--test", "nan"], "--test as a fraction must lie in (0, 1)"),
        (["--val", "4", "--test", "3"], "cannot take --val 4 + --test 3 from 6 structures"),
        (["--train", "0.7", "--val", "0.4"], "fractions --train 0.7 + --val 0.4 sum to 1.1"),
        (["--val", "0.1", "--stratify", "temperature"],
         "--val 0.1 gives 0 of the 3 structures in stratum 300.0 (0.1 x 3 rounds to 0); ask "
         "for at least 1 structure per stratum"),
        (["--val", "2", "--test", "1", "--stratify", "temperature"],
         "--train all the rest gives 0 of the 3 structures in stratum 300.0"),
    ],
)
def test_split_refuses_empty_or_out_of_range_parts(tmp_path, invoke, options, message):
    write_structures(tmp_path / "d.extxyz", _labelled(6, temperatures=(300.0, 600.0)))
    res = invoke("data", "split", tmp_path / "d.extxyz", *options, "-o", tmp_path / "p")
    assert res.exit_code == 2, res.out
    assert res.err.startswith("error: ") and message in res.err, res.err
    assert res.err.count("\n") == 1
    assert not list(tmp_path.glob("p_*"))


def test_split_accepts_sizes_that_fill_every_part(tmp_path, invoke):
    write_structures(tmp_path / "d.extxyz", _labelled(6, temperatures=(300.0, 600.0)))
    res = invoke("data", "split", tmp_path / "d.extxyz", "--val", "0.34", "--stratify",
                 "temperature", "-o", tmp_path / "p")
    assert res.exit_code == 0, res.err
    assert len(read_structures(tmp_path / "p_train.extxyz")) == 4
    assert len(read_structures(tmp_path / "p_val.extxyz")) == 2  # one per temperature
    assert "test: empty, not written" in res.out and not (tmp_path / "p_test.extxyz").exists()
    # (a regression guard, not an issue-20 case: it passed before the change too)


# --- C: what a structure file holds ---------------------------------------------------------

@pytest.mark.reliability("late", "a directory given as data: 'X is a directory, not a "
                         "structure file'")
def test_directory_as_data_is_named(tmp_path, invoke):
    (tmp_path / "folder.extxyz").mkdir()
    res = invoke("data", "info", tmp_path / "folder.extxyz")
    assert res.exit_code == 2
    assert res.err == f"error: {tmp_path / 'folder.extxyz'} is a directory, not a structure file\n"


@pytest.mark.reliability("late", "labels under other keys (REF_energy, REF_forces, DFT_energy "
                         "...) are refused naming the keys looked for and the keys found")
def test_labels_under_other_keys_are_named(tmp_path, invoke):
    atoms = rattled_diamond(seed=1)
    atoms.info["REF_energy"] = -36.0
    atoms.info["REF_virial"] = np.zeros((3, 3))
    atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
    write(tmp_path / "ref.extxyz", [atoms], format="extxyz")
    res = invoke("data", "info", tmp_path / "ref.extxyz")
    assert res.exit_code == 2 and res.err.count("\n") == 1
    assert "structure 0: Si8 carries no reference energy" in res.err
    assert "looked for the calculator's energy, forces and stress" in res.err
    assert "REF_energy (info)" in res.err and "REF_forces (arrays)" in res.err
    assert "REF_virial (info)" in res.err
    plain = rattled_diamond(seed=2)  # nothing label-like at all
    with pytest.raises(DataError, match="no other label-like keys"):
        from congener.data.structures import validate
        validate([plain])


@pytest.mark.reliability("silent", "a dummy atom X (atomic number 0) is refused naming the "
                         "structure and the atom")
def test_dummy_atom_is_refused(tmp_path, invoke):
    good = _labelled(1)[0]
    bad = Atoms("Si2X", positions=[[0, 0, 0], [1.2, 1.3, 1.1], [2.5, 2.5, 2.5]],
                cell=5.0 * np.eye(3), pbc=True)
    label(bad, energy=-9.0, forces=np.zeros((3, 3)))
    write_structures(tmp_path / "x.extxyz", [good, bad])
    res = invoke("data", "info", tmp_path / "x.extxyz")
    assert res.exit_code == 2 and res.err.count("\n") == 1
    assert "x.extxyz: structure 1 holds 1 dummy atom(s) X (atomic number 0), the first at " \
           "index 2" in res.err
