"""CHGNet (Deng et al. 2023, the `chgnet` package) as a congener model family.

`CHGNetNetwork` holds a `chgnet.model.CHGNet` as its submodule `model` (CHGNet's own parameter
names under the prefix `model.`) and gives per-atom energies in eV without CHGNet's composition
model: its per-element energies (AtomRef) become the `Potential`'s `energy_refs`, so
congener's total energy = CHGNet's energy per atom x N.

Graphs: CHGNet's atom graph is the periodic neighbour list within `atom_graph_cutoff` (6 Å in
0.3.0 and r2scan, 5 Å in 0.2.0) and its bond graph pairs the bonds shorter than
`bond_graph_cutoff` (3 Å) that share an atom. Both are built here from congener's `Graph`
(vesin's neighbour list at `cutoff`, which knows free boundaries and slabs, with the reverse of
every edge) with numpy, for the whole batch at once, instead of CHGNet's pymatgen-based
converter: the same edges, bonds and angles (CHGNet's bond graph also pairs a bond with the
other image of a self-image bond, which congener's DimeNet triplets exclude). The edge vectors
come from the (possibly strained, differentiable) positions and cell, so forces and stress
follow by autograd; the neighbour search itself is not differentiated (the bases vanish
smoothly at both cutoffs). Free structures (zero cell) need no lattice.

Then CHGNet's own `_compute` runs on the assembled `BatchedGraph` and gives the site energies
(for a model whose readout pools before its MLP, `mlp_first=False`, each atom gets an equal
share of its structure's energy). Any float dtype works: `.to(torch.float64)` makes every
step float64 (CHGNet's only float32 constant left is the constant 1/sqrt(2) column of its
angle basis, which does not depend on the positions).

Foundation models: `load("0.3.0" | "0.2.0" | "r2scan")` reads the weights shipped inside the
chgnet wheel (no network access).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import Tensor

from congener.errors import ConfigError, DataError
from congener.graph import Graph
from congener.models.family import Network, jsonable
from congener.models.potential import Potential

VARIANTS = ("0.3.0", "0.2.0", "r2scan")


def _quiet():
    """CHGNet prints a line whenever a model is built; congener does not."""
    return contextlib.redirect_stdout(io.StringIO())


class CHGNetNetwork(Network):
    """CHGNet without its composition model; `model` is the `chgnet.model.CHGNet`."""

    family = "chgnet"

    def __init__(self, model: Any) -> None:
        super().__init__()
        if getattr(model, "composition_model", None) is not None:
            raise ConfigError("CHGNetNetwork takes a CHGNet without composition model: its "
                              "per-element energies belong to the Potential's energy_refs")
        self.model = model

    # --- contract -----------------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        return float(self.model.graph_converter.atom_graph_cutoff)

    @property
    def bond_cutoff(self) -> float:
        return float(self.model.graph_converter.bond_graph_cutoff)

    def config(self) -> dict[str, Any]:
        """CHGNet's constructor arguments (`model_args`), less the composition model."""
        return {k: jsonable(v) for k, v in self.model.model_args.items()
                if k != "composition_model"}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CHGNetNetwork:
        """A CHGNet of this architecture with random weights and no composition model."""
        from chgnet.model import CHGNet

        if not isinstance(config, dict):
            raise ConfigError(f"a CHGNet config is a mapping, not {type(config).__name__}")
        args = {k: v for k, v in config.items() if k != "composition_model"}
        with _quiet():
            model = CHGNet(**args, composition_model=None)
        return cls(model)

    def supported_elements(self) -> list[str]:
        n = self.model.atom_embedding.embedding.num_embeddings
        return list(chemical_symbols[1:n + 1])

    def _layers(self) -> list[tuple[str, str, Any]]:
        """(block name, module path under `model`, module) in the order the forward pass
        uses them: atom, bond, angle convolution of each layer; the last atom convolution."""
        m = self.model
        out = []
        n_conv = len(m.atom_conv_layers)
        for k in range(n_conv - 1):
            out.append((f"atom_conv:{k}", f"atom_conv_layers.{k}", m.atom_conv_layers[k]))
            if m.bond_conv_layers[k] is not None:
                out.append((f"bond_conv:{k}", f"bond_conv_layers.{k}", m.bond_conv_layers[k]))
                if m.angle_layers[k] is not None:
                    out.append((f"angle_conv:{k}", f"angle_layers.{k}", m.angle_layers[k]))
        out.append((f"atom_conv:{n_conv - 1}", f"atom_conv_layers.{n_conv - 1}",
                    m.atom_conv_layers[n_conv - 1]))
        return out

    def blocks(self) -> list[tuple[str, list[str]]]:
        """Embeddings (atoms; bonds with their radial bases and the bond weights of the atom
        and bond convolutions; angles with their Fourier basis), then per layer k
        `atom_conv:k`, `bond_conv:k`, `angle_conv:k`, the last `atom_conv`, and `readout`
        (readout norm, pooling, MLP, and the magnetic-moment head, which the energy does not
        use)."""
        out = [
            ("atom_embedding", ["model.atom_embedding.*"]),
            ("bond_embedding", ["model.bond_basis_expansion.*", "model.bond_embedding.*",
                                "model.bond_weights_ag.*", "model.bond_weights_bg.*"]),
            ("angle_embedding", ["model.angle_basis_expansion.*", "model.angle_embedding.*"]),
        ]
        out += [(name, [f"model.{path}.*"]) for name, path, _ in self._layers()]
        out.append(("readout", ["model.readout_norm.*", "model.pooling.*", "model.mlp.*",
                                "model.site_wise.*"]))
        return out

    def block_aliases(self) -> dict[str, list[str]]:
        names = [name for name, _, _ in self._layers()]
        return {
            "embeddings": ["atom_embedding", "bond_embedding", "angle_embedding"],
            "atom_convs": [n for n in names if n.startswith("atom_conv:")],
            "bond_convs": [n for n in names if n.startswith("bond_conv:")],
            "angle_convs": [n for n in names if n.startswith("angle_conv:")],
            "convs": names,
        }

    # --- forward --------------------------------------------------------------------------
    def forward(self, graph: Graph, positions: Tensor, cell: Tensor) -> Tensor:
        """Per-atom energies [N] (eV, composition model excluded), differentiable with respect
        to `positions` and `cell`."""
        from chgnet.model.model import BatchedGraph

        m = self.model
        if graph.cutoff < self.cutoff - 1e-9:
            raise DataError(f"CHGNet needs a graph built with a cutoff of {self.cutoff:g} Å "
                            f"or more; this one has {graph.cutoff:g} Å")
        vec_all = graph.edge_vectors(positions, cell)  # x_j - x_i + S @ cell
        topo = _topology(graph, vec_all.detach().norm(dim=1), self.cutoff, self.bond_cutoff)
        vec = vec_all.index_select(0, topo["kept"])
        length = vec.norm(dim=1)
        und_length = length.index_select(0, topo["undirected2directed"])
        bond_bases_ag = m.bond_basis_expansion.rbf_expansion_ag(und_length)
        bond_bases_bg = m.bond_basis_expansion.rbf_expansion_bg(und_length)
        # CHGNet's bond vectors point from the neighbour to the centre; angles between two
        # bonds of one centre are the same either way
        unit = vec / length.unsqueeze(1)
        angle_bases = m.angle_basis_expansion(unit.index_select(0, topo["angle_first"]),
                                              unit.index_select(0, topo["angle_second"]))
        batched = BatchedGraph(
            atomic_numbers=graph.species.to(torch.int32),
            bond_bases_ag=bond_bases_ag,
            bond_bases_bg=bond_bases_bg,
            angle_bases=angle_bases,
            batched_atom_graph=topo["atom_graph"],
            batched_bond_graph=topo["bond_graph"],
            atom_owners=graph.batch,
            directed2undirected=topo["directed2undirected"],
            atom_positions=[], strains=[], volumes=[],
        )
        if m.mlp_first:
            out = m._compute(batched, return_site_energies=True)
            return torch.cat(list(out["site_energies"]))
        out = m._compute(batched)  # energy per structure (per atom if is_intensive)
        n_atoms = graph.n_atoms.to(out["e"].dtype)
        per_atom = out["e"] if m.is_intensive else out["e"] / n_atoms
        return per_atom.index_select(0, graph.batch)


def _topology(graph: Graph, length: Tensor, cutoff: float, bond_cutoff: float
              ) -> dict[str, Tensor]:
    """CHGNet's atom and bond graphs from congener's edges (index tensors, see module doc).

    Directed edges: congener's edges shorter than `cutoff` (atom_graph rows (centre,
    neighbour)); undirected edges: each edge with its reverse, numbered by the edge of the pair
    that comes first; angles: ordered pairs of distinct directed edges of one centre, both
    shorter than `bond_cutoff` (bond_graph rows (centre, undirected bond, undirected bond))."""
    device = graph.edge_index.device
    dist = length.cpu().numpy()
    centre, neighbour = graph.edge_index.cpu().numpy()
    reverse = graph.edge_reverse.cpu().numpy()
    keep = dist < cutoff  # an edge and its reverse have the same length, bit for bit
    new_index = np.cumsum(keep) - 1
    kept = np.flatnonzero(keep)
    centre, neighbour, dist = centre[kept], neighbour[kept], dist[kept]
    rev = new_index[reverse[kept]]
    first = np.arange(kept.size) < rev
    undirected_id = np.cumsum(first) - 1
    directed2undirected = undirected_id[np.minimum(np.arange(kept.size), rev)]
    undirected2directed = np.flatnonzero(first)

    short = np.flatnonzero(dist < bond_cutoff)
    short = short[np.argsort(centre[short], kind="stable")]
    counts = np.bincount(centre[short], minlength=graph.positions.shape[0])
    ptr = np.concatenate([[0], np.cumsum(counts)])
    per_edge = counts[centre[short]]
    a = np.repeat(np.arange(short.size), per_edge)
    offset = np.arange(a.size) - np.repeat(np.cumsum(per_edge) - per_edge, per_edge)
    b = ptr[centre[short]][a] + offset
    distinct = a != b
    angle_first, angle_second = short[a[distinct]], short[b[distinct]]
    bond_graph = np.stack([centre[angle_first], directed2undirected[angle_first],
                           directed2undirected[angle_second]], axis=1)

    def t(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(device)

    return {
        "kept": t(kept),
        "atom_graph": t(np.stack([centre, neighbour], axis=1).reshape(-1, 2)),
        "directed2undirected": t(directed2undirected),
        "undirected2directed": t(undirected2directed),
        "angle_first": t(angle_first),
        "angle_second": t(angle_second),
        "bond_graph": t(bond_graph.reshape(-1, 3)),
    }


def load(variant: str) -> Potential:
    """CHGNet `variant` (one of `VARIANTS`) from the weights shipped in the chgnet package
    (no network access), as a float32 `Potential` whose `energy_refs` are CHGNet's AtomRef
    per-element energies."""
    import chgnet
    from chgnet.model import CHGNet

    if variant not in VARIANTS:
        raise ConfigError(f"unknown CHGNet model {variant!r} (known: {', '.join(VARIANTS)})")
    with _quiet():
        model = CHGNet.load(model_name=variant, use_device="cpu", verbose=False)
    composition = model.composition_model
    model.composition_model = None
    network = CHGNetNetwork(model)
    elements = network.supported_elements()
    potential = Potential(network, elements)
    if composition is not None:
        # AtomRef: energy per atom = sum_Z (count_Z / N) w[Z-1] when intensive, total =
        # sum_Z count_Z w[Z-1] when not: either way w[Z-1] per atom of the total energy
        weights = composition.fc.weight.detach().double().reshape(-1).tolist()
        potential.set_energy_refs({s: weights[atomic_numbers[s] - 1] for s in elements
                                   if atomic_numbers[s] <= len(weights)})
    potential.metadata = {"family": "chgnet", "variant": variant,
                          "chgnet_version": getattr(chgnet, "__version__", "unknown")}
    return potential.eval()
