"""Neighbour lists and triplets against brute-force enumeration, including multiple images."""

from __future__ import annotations

import itertools

import ase.build
import numpy as np
import pytest
import torch

from congener.errors import DataError
from congener.graph import build_graph, neighbour_list, reverse_edges, symmetric_edges
from congener.models.triplets import Triplets
from tests.conftest import numpy_triplets as triplets
from tests.conftest import rattled_diamond


def brute_edges(atoms, cutoff):
    """All (i, j, S) with |x_j + S@cell - x_i| < cutoff and not (i == j and S == 0)."""
    cell = atoms.cell.array
    reach = [int(np.ceil(cutoff / (atoms.get_volume() / np.linalg.norm(
        np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))))) + 1 for k in range(3)]
    out = set()
    reach = [r if periodic else 0 for r, periodic in zip(reach, atoms.pbc, strict=True)]
    for s in itertools.product(*[range(-r, r + 1) for r in reach]):
        shift = np.array(s) @ cell
        for i, j in itertools.product(range(len(atoms)), repeat=2):
            if i == j and not any(s):
                continue
            if np.linalg.norm(atoms.positions[j] + shift - atoms.positions[i]) < cutoff:
                out.add((i, j, *s))
    return out


@pytest.mark.parametrize("cutoff", [3.0, 5.0, 7.5])
def test_edges_match_brute_force_small_cell(cutoff):
    # primitive 2-atom cell (edge 3.84 Å) with cutoff up to ~2x its length: many images
    atoms = ase.build.bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=3)
    ei, s = neighbour_list(atoms, cutoff)
    got = {(int(i), int(j), *map(int, sh)) for i, j, sh in zip(ei[0], ei[1], s, strict=True)}
    assert got == brute_edges(atoms, cutoff)
    if cutoff > 4:
        assert any(i == j for i, j, *_ in got), "self-images must appear for a short cell"


@pytest.mark.parametrize("pbc", [(True, True, False), (False, True, False)])
def test_edges_of_slabs_and_wires_match_brute_force(pbc):
    # a short cell, periodic along some axes only: images there and none along the others
    atoms = ase.build.bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=4)
    atoms.pbc = pbc
    ei, s = neighbour_list(atoms, 5.0)
    got = {(int(i), int(j), *map(int, sh)) for i, j, sh in zip(ei[0], ei[1], s, strict=True)}
    assert got == brute_edges(atoms, 5.0)
    shifts = np.array([e[2:] for e in got])
    assert not shifts[:, ~np.array(pbc)].any() and shifts[:, np.array(pbc)].any()


def edge_set(atoms, cutoff):
    ei, s = neighbour_list(atoms, cutoff)
    return {(int(i), int(j), *map(int, sh)) for i, j, sh in zip(ei[0], ei[1], s, strict=True)}


def test_slabs_beyond_their_cell_and_without_vacuum():
    # atoms far outside the cell along the open axis; then the same slab as ASE builds it
    # without vacuum (a zero cell vector there): the neighbours stay those of the padded slab
    slab = ase.build.diamond100("Si", size=(2, 2, 4), vacuum=8.0)
    slab.rattle(0.05, seed=5)
    slab.pbc = (True, True, False)
    moved = slab.copy()
    moved.positions[:, 2] -= 25.0
    assert edge_set(moved, 4.0) == edge_set(slab, 4.0) == brute_edges(slab, 4.0)
    flat = slab.copy()
    flat.cell[2] = 0.0
    assert edge_set(flat, 4.0) == edge_set(slab, 4.0)
    wire = slab.copy()
    wire.pbc, wire.cell[1], wire.cell[2] = (True, False, False), 0.0, 0.0
    padded = slab.copy()
    padded.pbc, padded.cell[1] = (True, False, False), [0.0, 40.0, 0.0]
    assert edge_set(wire, 4.0) == edge_set(padded, 4.0)


def test_periodic_axis_without_a_cell_vector_is_refused():
    atoms = ase.build.bulk("Si", "diamond", a=5.43)
    atoms.cell[2] = 0.0
    with pytest.raises(DataError, match="independent cell"):
        neighbour_list(atoms, 4.0)


def brute_triplets(edge_index, shifts):
    out = []
    edges = list(zip(edge_index[0], edge_index[1], map(tuple, shifts), strict=True))
    for a, (i, j, s_ji) in enumerate(edges):
        for b, (j2, k, s_kj) in enumerate(edges):
            if j2 != j:
                continue
            if k == i and all(x + y == 0 for x, y in zip(s_kj, s_ji, strict=True)):
                continue  # k is i itself (same atom and image)
            out.append((b, a))
    return sorted(out)


def test_reverse_edges_pair_each_edge_with_its_mirror():
    atoms = ase.build.bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=4)
    ei, s = neighbour_list(atoms, 6.0)  # several images of each atom
    rev = reverse_edges(ei, s)
    assert (rev >= 0).all() and (rev[rev] == np.arange(len(rev))).all()
    np.testing.assert_array_equal(ei[:, rev], ei[::-1])
    np.testing.assert_array_equal(s[rev], -s)
    # an edge whose mirror is missing (rounding at the cutoff) has none and is dropped
    cut = np.ones(len(rev), dtype=bool)
    cut[5] = False
    rev_cut = reverse_edges(ei[:, cut], s[cut])
    assert (rev_cut < 0).sum() == 1
    ei2, _, rev2 = symmetric_edges(ei[:, cut], s[cut])
    assert ei2.shape[1] == len(rev) - 2 and (rev2[rev2] == np.arange(len(rev2))).all()
    np.testing.assert_array_equal(ei2[:, rev2], ei2[::-1])


@pytest.mark.parametrize("cutoff", [4.0, 6.0])
def test_triplets_match_brute_force(cutoff):
    atoms = ase.build.bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=4)
    ei, s = neighbour_list(atoms, cutoff)
    kj, ji = triplets(ei, reverse_edges(ei, s), len(atoms))
    assert sorted(zip(kj.tolist(), ji.tolist(), strict=True)) == brute_triplets(ei, s)
    # with several images of one atom, k == i (other image) must be kept
    keep_same_atom = [(b, a) for b, a in zip(kj, ji, strict=True) if ei[1, b] == ei[0, a]]
    assert keep_same_atom


def model_triplets(graph):
    """The (kj, ji) pairs that DimeNet++'s dense blocks treat as triplets (non-zero mask)."""
    tri = Triplets(graph, graph.positions.shape[0])
    row_edge = torch.full((tri.out_gather.numel(),), -1, dtype=torch.long)
    row_edge[tri.in_slot] = torch.arange(graph.edge_index.shape[1])
    pairs, offset = [], 0
    for mask, (n, d) in zip(tri.mask, tri.groups, strict=True):
        a, r, c = torch.nonzero(mask, as_tuple=True)
        rows, cols = offset + a * d + r, offset + a * d + c
        pairs += zip(tri.out_gather[cols].tolist(), row_edge[rows].tolist(), strict=True)
        offset += n * d
    return sorted(pairs)


def random_cell(n: int = 40, length: float = 10.0, seed: int = 1):
    """Atoms at random in a periodic cube: degrees differ from atom to atom."""
    rng = np.random.default_rng(seed)
    return ase.Atoms(f"Si{n}", positions=rng.uniform(0, length, (n, 3)), cell=[length] * 3,
                     pbc=True)


@pytest.mark.parametrize("case", ["primitive-4", "primitive-6", "random"])
def test_model_triplet_blocks_match_brute_force(case):
    # a primitive cell (several images of each atom) and random positions, whose degrees
    # differ from atom to atom (several degree groups, padded blocks)
    if case == "random":
        atoms, cutoff = random_cell(), 4.5
    else:
        atoms, cutoff = ase.build.bulk("Si", "diamond", a=5.43), float(case[-1])
        atoms.rattle(0.05, seed=4)
    graph = build_graph(atoms, cutoff)
    ei, s = graph.edge_index.numpy(), graph.cell_shifts.numpy()
    expected = brute_triplets(ei, s)
    assert model_triplets(graph) == expected
    kj, ji = graph.triplets()
    assert sorted(zip(kj.tolist(), ji.tolist(), strict=True)) == expected
    assert graph.n_triplets == len(expected)
    if case == "random":
        assert len(Triplets(graph, len(atoms)).groups) > 1


def test_counts_64_atom_diamond_5A():
    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    g = build_graph(atoms, 5.0)
    assert g.edge_index.shape[1] == 1792
    assert g.n_triplets == 48384 == g.triplets()[0].shape[0]


def test_batch_offsets_and_vectors():
    a = rattled_diamond("Si", seed=1)
    b = ase.build.bulk("Ge", "diamond", a=5.65)
    g = build_graph([a, b], 4.0)
    ga, gb = build_graph(a, 4.0), build_graph(b, 4.0)
    assert g.n_atoms.tolist() == [8, 2]
    assert g.edge_index.shape[1] == ga.edge_index.shape[1] + gb.edge_index.shape[1]
    np.testing.assert_allclose(g.edge_vectors().norm(dim=1).max(), 4.0, atol=0.5)
    assert (g.edge_vectors().norm(dim=1) < 4.0).all()
    # edges of the second structure point into its own atoms
    ne = ga.edge_index.shape[1]
    assert (g.edge_index[:, ne:] >= 8).all()
    assert (g.edge_reverse[ne:] >= ne).all() and (g.edge_reverse[:ne] < ne).all()
    assert (g.triplets()[0][ga.n_triplets:] >= ne).all()


def test_graph_shape_check_names_field():
    g = build_graph(rattled_diamond(), 4.0)
    with pytest.raises(ValueError, match="cell_shifts"):
        type(g)(**{**g.__dict__, "cell_shifts": g.cell_shifts[:-1]})
