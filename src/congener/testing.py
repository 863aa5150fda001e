"""Physics checks shared by the tests of every potential (and usable on user models).

Each helper raises `AssertionError` with the worst deviation when a check fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from congener.graph import build_graph
from congener.models.potential import Potential, Prediction


def predict(pot: Potential, atoms: Atoms | Sequence[Atoms], *, stress: bool = False,
            dtype: torch.dtype = torch.float64) -> Prediction:
    """Run `pot` on one or several structures (graph built at the potential's cutoff)."""
    graph = build_graph(atoms, pot.cutoff).to(dtype=dtype)
    return pot(graph, stress=stress)


def energy(pot: Potential, atoms: Atoms, dtype: torch.dtype = torch.float64) -> float:
    """Total energy (eV) of one structure."""
    return float(predict(pot, atoms, dtype=dtype).energy[0].detach())


def assert_forces_match_fd(pot: Potential, atoms: Atoms, *, h: float = 1e-4,
                           rtol: float = 1e-6, atol: float = 1e-8, n_checks: int = 6,
                           seed: int = 0) -> None:
    """Forces equal minus the central finite-difference gradient of the energy (float64)."""
    forces = predict(pot, atoms).forces.detach().numpy()
    rng = np.random.default_rng(seed)
    for idx in rng.choice(len(atoms) * 3, size=min(n_checks, len(atoms) * 3), replace=False):
        a, d = divmod(int(idx), 3)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, d] += h
        minus.positions[a, d] -= h
        fd = -(energy(pot, plus) - energy(pot, minus)) / (2 * h)
        tol = atol + rtol * max(abs(fd), float(np.abs(forces).max()))
        assert abs(fd - forces[a, d]) <= tol, (
            f"force on atom {a}, axis {d}: model {forces[a, d]:.10g}, FD {fd:.10g}")


def assert_stress_match_fd(pot: Potential, atoms: Atoms, *, h: float = 1e-5,
                           rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Stress equals the finite-difference derivative of E w.r.t. symmetric strain / volume."""
    stress = predict(pot, atoms, stress=True).stress[0].detach().numpy()
    volume = atoms.get_volume()
    for a, b in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h if a == b else h / 2
        plus, minus = atoms.copy(), atoms.copy()
        plus.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        minus.set_cell(atoms.cell.array @ (np.eye(3) - eps), scale_atoms=True)
        fd = (energy(pot, plus) - energy(pot, minus)) / (2 * h) / volume
        tol = atol + rtol * float(np.abs(stress).max())
        assert abs(fd - stress[a, b]) <= tol, (
            f"stress[{a},{b}]: model {stress[a, b]:.10g}, FD {fd:.10g}")


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def transformed(atoms: Atoms, op: str, seed: int = 0) -> tuple[Atoms, np.ndarray, np.ndarray]:
    """Apply a symmetry operation; return (new atoms, rotation R, permutation p).

    Forces transform as F_new[k] = F_old[p[k]] @ R.T.
    """
    rng = np.random.default_rng(seed)
    new = atoms.copy()
    rot, perm = np.eye(3), np.arange(len(atoms))
    if op == "rotate":
        rot = _rotation(seed)
        new.set_cell(atoms.cell.array @ rot.T)
        new.positions = atoms.positions @ rot.T
    elif op == "translate":
        new.positions = atoms.positions + rng.normal(size=3) * 3.0
    elif op == "wrap":
        shift = rng.integers(-2, 3, size=(len(atoms), 3)) if atoms.pbc.all() else 0
        new.positions = atoms.positions + shift @ atoms.cell.array
    elif op == "permute":
        perm = rng.permutation(len(atoms))
        new = atoms[perm]
    else:
        raise ValueError(f"unknown operation {op!r}")
    return new, rot, perm


def assert_invariant(pot: Potential, atoms: Atoms, *,
                     ops: Sequence[str] = ("rotate", "translate", "wrap", "permute"),
                     dtype: torch.dtype = torch.float64, rtol: float = 1e-9,
                     atol: float = 1e-9) -> None:
    """Energy is invariant and forces equivariant under rotation, translation, wrap, permute."""
    ref = predict(pot, atoms, dtype=dtype)
    e0, f0 = float(ref.energy[0]), ref.forces.detach().double().numpy()
    for op in ops:
        new, rot, perm = transformed(atoms, op)
        out = predict(pot, new, dtype=dtype)
        e1, f1 = float(out.energy[0]), out.forces.detach().double().numpy()
        assert abs(e1 - e0) <= atol * len(atoms) + rtol * abs(e0), (
            f"{op}: energy {e1:.12g} != {e0:.12g}")
        expected = f0[perm] @ rot.T
        err = float(np.abs(f1 - expected).max())
        assert err <= atol + rtol * float(np.abs(f0).max()) * 1e3, f"{op}: forces differ by {err}"


def assert_batch_consistent(pot: Potential, structures: Sequence[Atoms], *,
                            dtype: torch.dtype = torch.float64, atol: float = 1e-9) -> None:
    """A batched evaluation equals the structures evaluated one by one."""
    batched = predict(pot, structures, stress=True, dtype=dtype)
    start = 0
    for k, atoms in enumerate(structures):
        single = predict(pot, atoms, stress=True, dtype=dtype)
        n = len(atoms)
        de = abs(float(batched.energy[k] - single.energy[0]))
        df = float((batched.forces[start:start + n] - single.forces).abs().max())
        ds = float((batched.stress[k] - single.stress[0]).abs().max())
        assert max(de, df, ds) <= atol * max(1.0, abs(float(single.energy[0]))), (
            f"structure {k}: batch differs from single (energy {de}, forces {df}, stress {ds})")
        start += n


def assert_blocks_partition(network) -> None:
    """The family's named blocks partition its parameters: each parameter is matched by the
    patterns of exactly one block, and no block is empty."""
    import fnmatch

    from congener.models.family import block_parameters

    blocks = network.blocks()
    names = [n for n, _ in network.named_parameters()]
    for name in names:
        owners = [b for b, patterns in blocks
                  if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        assert len(owners) == 1, f"parameter {name} is in blocks {owners}, not in exactly one"
    empty = [b for b, params in block_parameters(network) if not params]
    assert not empty, f"blocks without parameters: {empty}"
    aliases = network.block_aliases()
    known = {b for b, _ in blocks}
    for alias, members in aliases.items():
        assert set(members) <= known, f"alias {alias} names unknown blocks"


def assert_calculator_agrees(pot: Potential, atoms: Atoms, *, atol: float = 1e-9) -> None:
    """The ASE calculator over `pot` (float64, CPU) gives the energy, forces and Voigt stress
    (ASE sign) of `predict`."""
    from congener.calculator import CongenerCalculator

    out = predict(pot, atoms, stress=True)
    atoms = atoms.copy()
    atoms.calc = CongenerCalculator(pot, device="cpu")
    assert abs(atoms.get_potential_energy() - float(out.energy[0])) <= atol * len(atoms)
    np.testing.assert_allclose(atoms.get_forces(), out.forces.detach().double().numpy(),
                               atol=atol)
    s = out.stress[0].detach().double().numpy()
    voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
    np.testing.assert_allclose(atoms.get_stress(), voigt, atol=atol * 1e-2)


def default_structures(pot: Potential) -> list[Atoms]:
    """Two small test cells of an element the potential knows (Si or Ge if it can): a rattled,
    sheared (triclinic) 8-atom diamond cell and a rattled 2-atom primitive cell."""
    import ase.build

    element = next((e for e in ("Si", "Ge") if e in pot.elements), pot.elements[0])
    lattice = {"Si": 5.43, "Ge": 5.65}.get(element, 5.4)
    big = ase.build.bulk(element, "diamond", a=lattice, cubic=True)
    cell = big.cell.array.copy()
    cell[1] += 0.1 * cell[0]
    big.set_cell(cell, scale_atoms=True)
    big.rattle(0.08, seed=1)
    small = ase.build.bulk(element, "diamond", a=lattice * 1.02)
    small.rattle(0.05, seed=2)
    return [big, small]


def check_potential(pot: Potential, structures: Sequence[Atoms] | None = None, *,
                    dtype: torch.dtype = torch.float64, rtol: float = 1e-6,
                    atol: float = 1e-8) -> None:
    """Every check of the `Potential` contract, for any model family (raises AssertionError):
    shapes and dtypes of energy [B] (float64), forces [N,3] and stress [B,3,3]; forces equal
    minus the finite-difference gradient; stress equals the strain derivative over the volume;
    a batch equals its structures one by one; energy invariant and forces equivariant under
    rotation, translation, periodic wrapping and permutation; the named blocks partition the
    parameters. Run in float64."""
    structures = list(structures) if structures is not None else default_structures(pot)
    pot = pot.to(dtype)
    out = predict(pot, structures, stress=True, dtype=dtype)
    n, b = sum(len(a) for a in structures), len(structures)
    assert tuple(out.energy.shape) == (b,), f"energy shape {tuple(out.energy.shape)} != {(b,)}"
    assert out.energy.dtype == torch.float64, f"energy dtype {out.energy.dtype}, not float64"
    assert tuple(out.forces.shape) == (n, 3), f"forces shape {tuple(out.forces.shape)}"
    assert out.forces.dtype == dtype, f"forces dtype {out.forces.dtype}, not {dtype}"
    assert out.stress is not None and tuple(out.stress.shape) == (b, 3, 3), "stress shape"
    for tensor, name in ((out.energy, "energy"), (out.forces, "forces"),
                         (out.stress, "stress")):
        assert bool(torch.isfinite(tensor).all()), f"non-finite {name}"
    assert not out.forces.requires_grad, "outputs outside training must be detached"
    for atoms in structures:
        assert_forces_match_fd(pot, atoms, rtol=rtol, atol=atol)
        assert_stress_match_fd(pot, atoms, rtol=rtol * 10, atol=atol)
        assert_invariant(pot, atoms, dtype=dtype, rtol=max(rtol * 1e-3, 1e-9),
                         atol=max(atol * 1e-1, 1e-9))
    assert_batch_consistent(pot, structures, dtype=dtype, atol=max(atol * 0.1, 1e-9))
    assert_blocks_partition(pot.network)
