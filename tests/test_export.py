"""`export_potential` and `congener export`: the metatomic model file against congener's own
calculator (ASE through metatomic-ase; torch-sim-style batches; LAMMPS-style ghost atoms)."""

from __future__ import annotations

import warnings

import ase.build
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

pytest.importorskip("metatomic.torch")
pytest.importorskip("metatomic_ase")

import vesin.metatomic
from metatensor.torch import Labels
from metatomic.torch import (
    ModelEvaluationOptions,
    ModelOutput,
    System,
    load_atomistic_model,
)
from metatomic_ase import MetatomicCalculator

from congener.calculator import CongenerCalculator
from congener.errors import ConfigError
from congener.export import export_potential
from congener.models.checkpoint import save_potential
from congener.models.family import Network
from congener.models.potential import Potential
from tests.conftest import rattled_diamond, small_potential

# absolute tolerances (eV, eV/Å, eV/Å³) of the exported model against congener in the same
# dtype; measured: float64 1.4e-14 / 2.4e-16 / 1.6e-18, float32 2.5e-6 / 1.7e-7 / 1.3e-9
TOL = {torch.float64: {"energy": 1e-11, "energies": 1e-12, "forces": 1e-12, "stress": 1e-13},
       torch.float32: {"energy": 2e-5, "energies": 2e-6, "forces": 2e-6, "stress": 2e-8}}


def mixed_cell() -> Atoms:
    """A rattled triclinic Si/Ge cell (16 atoms, every third Ge)."""
    atoms = rattled_diamond(a=5.5, reps=(1, 1, 2), amount=0.1, seed=1)
    atoms.numbers[::3] = 32
    return atoms


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """dtype -> (Potential, model file) for small Si/Ge potentials in float64 and float32."""
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for dtype in (torch.float64, torch.float32):
        potential = small_potential(("Si", "Ge"), dtype=dtype).eval()
        out[dtype] = potential, export_potential(potential, folder / f"{dtype}.pt")
    return out


def _results(atoms: Atoms, calc) -> dict[str, np.ndarray]:
    """Energy, per-atom energies, forces and (periodic cells) stress of an ASE calculator,
    in one call."""
    keys = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.all() else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # metatomic's deprecation notices
        calc.calculate(atoms.copy(), keys, all_changes)
    return {k: np.asarray(calc.results[k]) for k in keys}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_ase_calculator_matches_congener(exported, dtype):
    potential, path = exported[dtype]
    model = load_atomistic_model(str(path))
    caps = model.capabilities()
    assert caps.atomic_types == [14, 32] and caps.dtype == str(dtype).split(".")[1]
    assert caps.interaction_range == pytest.approx(3 * potential.cutoff)  # 2 blocks + 1
    mine = MetatomicCalculator(path, check_consistency=True)
    ref = CongenerCalculator(potential, device="cpu", dtype=caps.dtype)
    for atoms in (rattled_diamond(), mixed_cell()):
        got, want = _results(atoms, mine), _results(atoms, ref)
        assert np.abs(want["forces"]).max() > 1e-3  # not a vacuous comparison
        for key, tol in TOL[dtype].items():
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=tol, err_msg=key)


def test_small_cells_and_open_structures(exported):
    """A primitive cell shorter than twice the cutoff (an atom meets images of itself and of
    its neighbours: the reverse edge is told apart by its image shift), a molecule without a
    cell, and a lone atom (no edges)."""
    potential, path = exported[torch.float64]
    mine = MetatomicCalculator(path, check_consistency=True)
    ref = CongenerCalculator(potential, device="cpu")
    primitive = ase.build.bulk("Si", "diamond", a=5.43)
    primitive.rattle(0.05, seed=2)
    molecule = Atoms("SiGeSi", positions=[[0, 0, 0], [2.3, 0.1, 0], [1.0, 2.0, 0.3]])
    lone = Atoms("Ge", cell=[10, 10, 10], pbc=True)
    for atoms in (primitive, molecule, lone):
        got, want = _results(atoms, mine), _results(atoms, ref)
        for key in ("energy", "energies", "forces"):
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-11, err_msg=key)


def _system(atoms: Atoms, model, *, periodic: bool = True) -> System:
    dtype = torch.float64
    cell = torch.tensor(atoms.cell.array if periodic else np.zeros((3, 3)), dtype=dtype)
    system = System(torch.tensor(atoms.numbers, dtype=torch.int32),
                    torch.tensor(atoms.positions, dtype=dtype, requires_grad=True), cell,
                    torch.tensor([periodic] * 3))
    for calculator in vesin.metatomic.neighbor_lists_for_model("angstrom", model):
        calculator.add_neighbor_list([system])
    return system


def _energy(model, systems, kind="system", selected=None):
    options = ModelEvaluationOptions(length_unit="angstrom", selected_atoms=selected,
                                     outputs={"energy": ModelOutput(unit="eV", sample_kind=kind)})
    return model(systems, options, check_consistency=True)["energy"].block()


def test_batch_of_systems_matches_congener(exported):
    """Several systems in one call (as torch-sim sends them), per system and per atom."""
    potential, path = exported[torch.float64]
    model = load_atomistic_model(str(path))
    structures = [rattled_diamond(), mixed_cell()]
    ref = CongenerCalculator(potential, device="cpu")
    want = [_results(a, ref) for a in structures]
    systems = [_system(a, model) for a in structures]
    total = _energy(model, systems)
    np.testing.assert_allclose(total.values[:, 0].detach(), [w["energy"] for w in want],
                               rtol=0, atol=1e-11)
    grads = torch.autograd.grad(total.values.sum(), [s.positions for s in systems])
    for grad, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(-grad.numpy(), w["forces"], rtol=0, atol=1e-12)
    per_atom = _energy(model, systems, kind="atom")
    assert per_atom.samples.names == ["system", "atom"]
    np.testing.assert_allclose(per_atom.values[:, 0].detach(),
                               np.concatenate([w["energies"] for w in want]), rtol=0, atol=1e-12)


def _with_ghosts(atoms: Atoms, reach: float) -> tuple[Atoms, np.ndarray]:
    """The cell's atoms first, then their periodic images within `reach` of any of them, as
    one open structure (LAMMPS' ghost atoms), with the owner of each atom."""
    heights = atoms.cell.volume / np.linalg.norm(np.cross(atoms.cell[[1, 2, 0]],
                                                          atoms.cell[[2, 0, 1]]), axis=1)
    span = [range(-r, r + 1) for r in np.ceil(reach / heights).astype(int)]
    positions, owner = [atoms.positions], [np.arange(len(atoms))]
    for shift in np.stack(np.meshgrid(*span, indexing="ij"), -1).reshape(-1, 3):
        if shift.any():
            image = atoms.positions + shift @ atoms.cell.array
            near = np.linalg.norm(image[:, None] - atoms.positions[None], axis=2).min(1)
            positions.append(image[near <= reach])
            owner.append(np.flatnonzero(near <= reach))
    owner = np.concatenate(owner)
    return Atoms(numbers=atoms.numbers[owner], positions=np.concatenate(positions)), owner


def test_selected_atoms_with_ghosts_match_periodic(tmp_path):
    """LAMMPS' domain decomposition: an open system of the cell's atoms plus ghost images up
    to the interaction range, energy over the cell's atoms (selected_atoms), ghost forces
    summed onto their owners, equals the periodic energy and forces. (A 3 Å cutoff keeps the
    ghost shell, 9 Å, small.)"""
    potential = small_potential(("Si", "Ge"), cutoff=3.0).eval()
    model = load_atomistic_model(str(export_potential(potential, tmp_path / "model.pt")))
    atoms = mixed_cell()[:8]
    want = _results(atoms, CongenerCalculator(potential, device="cpu"))
    cluster, owner = _with_ghosts(atoms, model.capabilities().interaction_range)
    system = _system(cluster, model, periodic=False)
    selected = Labels(["system", "atom"], torch.tensor([[0, k] for k in range(len(atoms))],
                                                       dtype=torch.int32))
    energy = _energy(model, [system], selected=selected).values
    (grad,) = torch.autograd.grad(energy.sum(), [system.positions])
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, owner, -grad.numpy())
    assert float(energy.detach()) == pytest.approx(float(want["energy"]), abs=1e-11)
    np.testing.assert_allclose(forces, want["forces"], rtol=0, atol=1e-12)
    per_atom = _energy(model, [system], kind="atom", selected=selected)
    assert per_atom.samples.values.tolist() == selected.values.tolist()
    np.testing.assert_allclose(per_atom.values[:, 0].detach(), want["energies"], atol=1e-12)


class _Other(Network):
    family = "other"


def test_export_refuses_other_families(tmp_path):
    with pytest.raises(ConfigError, match="DimeNet\\+\\+ models only") as info:
        export_potential(Potential(_Other(), ["Si"]), tmp_path / "model.pt")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_cli_export(tmp_path, invoke):
    potential = small_potential(("Si", "Ge"))
    save_potential(tmp_path / "model.ckpt", potential)
    result = invoke("export", tmp_path / "model.ckpt", "-o", tmp_path / "out" / "model.pt")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.out and "Si, Ge" in result.out
    model = load_atomistic_model(str(tmp_path / "out" / "model.pt"))
    assert model.capabilities().dtype == "float32"
    assert model.capabilities().atomic_types == [14, 32]


def test_cli_export_refuses_missing_model(tmp_path, invoke):
    result = invoke("export", tmp_path / "missing.ckpt", "-o", tmp_path / "model.pt")
    assert result.exit_code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.ckpt" in lines[0]
    assert not (tmp_path / "model.pt").exists()
