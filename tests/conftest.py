"""Shared fixtures: tiny structures built in the tests, small random DimeNet++ potentials."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch

from congener.models.dimenet import DimeNetConfig, DimeNetPP
from congener.models.potential import Potential

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"

torch.set_num_threads(2)


def small_potential(elements=("Si",), cutoff: float = 4.0, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> Potential:
    """A small random DimeNet++ with non-zero output weights (the default init is zero)."""
    torch.manual_seed(seed)
    cfg = DimeNetConfig(cutoff=cutoff, hidden=16, out_emb=16, int_emb=8, basis_emb=2,
                        num_blocks=2, num_spherical=4, num_radial=4)
    net = DimeNetPP(cfg)
    for out in net.outputs:
        torch.nn.init.normal_(out.lin.weight, std=0.3)
    pot = Potential(net, list(elements)).to(dtype)
    pot.set_energy_refs({e: -4.0 - 0.1 * k for k, e in enumerate(pot.elements)})
    return pot


def family_potential(network, refs=(("Si", -5.0), ("Ge", -4.5))) -> Potential:
    """A float64 `Potential` over `network` (any family) knowing every element the network
    embeds, with the given reference energies (eV/atom)."""
    potential = Potential(network, network.supported_elements()).to(torch.float64)
    potential.set_energy_refs(dict(refs))
    return potential


def rattled_ge(reps=(1, 1, 1), seed: int = 3):
    """A rattled cubic Ge diamond cell (8 atoms per repetition)."""
    atoms = ase.build.bulk("Ge", "diamond", a=5.65, cubic=True) * reps
    atoms.rattle(0.05, seed=seed)
    return atoms


def rattled_diamond(symbol: str = "Si", a: float = 5.43, reps=(1, 1, 1), amount: float = 0.08,
                    seed: int = 0, shear: float = 0.15):
    """A rattled, slightly sheared (triclinic) diamond cell."""
    atoms = ase.build.bulk(symbol, "diamond", a=a, cubic=True) * reps
    cell = atoms.cell.array.copy()
    cell[1] += shear * cell[0] / np.linalg.norm(cell[0])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(amount, seed=seed)
    return atoms


@pytest.fixture
def one_thread():
    """Tiny graphs gain nothing from a second thread on the shared 2-core machine (modules
    use it with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def potential():
    return small_potential()


class Result:
    """Exit code, standard output and error, and both combined, of one `congener` command."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.exit_code, self.out, self.err, self.output = code, out, err, out + err


@pytest.fixture
def invoke(capsys):
    """Run the `congener` command line in this process: invoke("train", "--train", ...)."""
    from congener.cli import main

    def run(*args) -> Result:
        code = main([str(a) for a in args])
        return Result(code, *capsys.readouterr())
    return run


def numpy_triplets(edge_index: np.ndarray, edge_reverse: np.ndarray, n_atoms: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """An independent numpy listing of the (kj, ji) triplets (edges sorted by centre): the
    reference for `congener.graph.triplet_indices`, which lists them with torch."""
    centre, neighbour = edge_index
    ptr = np.concatenate([[0], np.cumsum(np.bincount(centre, minlength=n_atoms))])
    n_kj = ptr[neighbour + 1] - ptr[neighbour]
    ji = np.repeat(np.arange(centre.size), n_kj)
    offset = np.arange(ji.size) - np.repeat(np.cumsum(n_kj) - n_kj, n_kj)
    kj = np.repeat(ptr[neighbour], n_kj) + offset
    same = kj == edge_reverse[ji]
    return kj[~same].astype(np.int64), ji[~same].astype(np.int64)
