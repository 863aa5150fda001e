"""The Potential contract: `Graph` -> `Prediction` (energy, forces, stress).

A `Potential` wraps any module that maps (graph, positions, cell) to per-atom energies and
adds per-element reference energies. The network is any model family (`models.family.Network`:
DimeNet++, CHGNet, SevenNet). Forces = -dE/dx and stress = (1/V) dE/d(strain) (ASE sign:
positive = tensile) come from one autograd call, written once here, or, for a family whose
class declares a hand-written gradient (DimeNet++) and when no autograd graph is asked for,
from that gradient with respect to the edge vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import Tensor, nn

from congener.errors import DataError
from congener.graph import Graph
from congener.models.dimenet import MAX_Z


def _per_structure(graph: Graph, values: Tensor, owner: Tensor | None = None) -> Tensor:
    """Sum of `values` [M, ...] per structure -> [B, ...]; `owner` [M] says whose each row
    is (default: the atoms' structures)."""
    owner = graph.batch if owner is None else owner
    return values.new_zeros((graph.n_structures, *values.shape[1:])).index_add_(0, owner, values)


def _per_volume(graph: Graph, strain_derivative: Tensor) -> Tensor:
    """Stress [B, 3, 3] from dE/d(strain): divided by each cell's volume."""
    volume = torch.linalg.det(graph.cell).abs().clamp_min(1e-12)
    return strain_derivative / volume[:, None, None]


@dataclass
class Prediction:
    """Output of a potential for a batch of B structures with N atoms.

    energy [B] eV (float64: reference energies of ~-300 eV per cell need it),
    forces [N,3] eV/Å, stress [B,3,3] eV/Å³ (ASE sign) or None.
    """

    energy: Tensor
    forces: Tensor
    stress: Tensor | None = None
    atomic: Tensor | None = None  # [N] per-atom energies, references included (eV, float64)


class Potential(nn.Module):
    """Energy model with an element table and per-element reference energies.

    `network(graph, positions, cell) -> [N]` gives atomic energies; the total energy is their
    sum per structure plus sum_atoms energy_refs[Z] (eV, float64 buffer).
    """

    def __init__(self, network: nn.Module, elements: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.elements: list[str] = sorted(set(elements), key=lambda s: atomic_numbers[s])
        allowed = torch.zeros(MAX_Z + 1, dtype=torch.bool)
        for symbol in self.elements:
            if atomic_numbers.get(symbol, MAX_Z + 1) > MAX_Z:
                raise DataError(f"element {symbol!r} is not supported (Z must be 1..{MAX_Z})")
            allowed[atomic_numbers[symbol]] = True
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("energy_refs", torch.zeros(MAX_Z + 1, dtype=torch.float64))

    @property
    def cutoff(self) -> float:
        return float(self.network.cutoff)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Potential:
        """`.to()`, `.float()`, ...: the network follows; the energy references stay float64."""
        refs = self.energy_refs
        super()._apply(fn, recurse)
        self.energy_refs = refs.to(device=self.energy_refs.device, dtype=torch.float64)
        return self

    def prepare(self, graph: Graph, on: Graph | None = None) -> None:
        """Check `graph`'s species and let the network do its host work on the edges, once
        for every later call on a graph with the same species and edge tensors (MD between
        neighbour-list builds): those calls then read nothing from the device. `on`: the
        same graph already moved to the device the calls will use (checked and laid out
        from the host copy `graph`, kept for `on`)."""
        self.check_species(graph.species)
        if on is not None:
            self._checked_species = (on.species, on.species._version)
        self.network.prepare(graph, on)

    def check_species(self, species: Tensor) -> None:
        """Raise `DataError` if `species` holds an element the model was not trained on (a
        tensor checked before, the same object, is not read again)."""
        checked = getattr(self, "_checked_species", None)
        if checked is not None and species is checked[0] and species._version == checked[1]:
            return
        known = {atomic_numbers[s] for s in self.elements}
        bad = [z for z in torch.unique(species).tolist() if z not in known]  # one host read
        if bad:
            names = [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
                     for z in bad]
            raise DataError(f"model knows {', '.join(self.elements)}; structure contains "
                            f"{', '.join(names)}")
        self._checked_species = (species, species._version)

    def reference_energy(self, graph: Graph) -> Tensor:
        """Sum of reference energies per structure [B] (float64, eV)."""
        refs = self.energy_refs.index_select(0, graph.species).to(torch.float64)
        return torch.zeros(graph.n_structures, dtype=torch.float64,
                           device=refs.device).index_add_(0, graph.batch, refs)

    def forward(self, graph: Graph, *, stress: bool = False, create_graph: bool = False
                ) -> Prediction:
        """Energy [B], forces [N,3] and optionally stress [B,3,3] of a batched graph.

        `create_graph=True` keeps the autograd graph (training on energies, forces, stress);
        otherwise the outputs are detached, and a family with `explicit_gradient` (DimeNet++)
        gives its energy gradient without autograd (`_explicit`).
        """
        self.check_species(graph.species)
        if not create_graph and self.network.explicit_gradient:
            return self._explicit(graph, stress)
        positions = graph.positions
        cell = graph.cell
        inputs = [positions.detach().requires_grad_(True)]
        if stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos = inputs[0] + torch.bmm(inputs[0].unsqueeze(1),
                                        sym.index_select(0, graph.batch)).squeeze(1)
            cell = cell + torch.bmm(cell, sym)
            inputs.append(strain)
        else:
            pos = inputs[0]
        with torch.enable_grad():
            atomic = self.network(graph, pos, cell)
            e_net = _per_structure(graph, atomic)
            grads = torch.autograd.grad(e_net.sum(), inputs, create_graph=create_graph)
        if not create_graph:
            e_net, atomic = e_net.detach(), atomic.detach()
        energy = e_net.to(torch.float64) + self.reference_energy(graph)
        out = Prediction(energy=energy, forces=-grads[0], atomic=self._atomic(graph, atomic))
        if stress:
            out.stress = _per_volume(graph, grads[1])
        return out

    def _explicit(self, graph: Graph, stress: bool) -> Prediction:
        """`forward` from the network's gradient with respect to the edge vectors r_e =
        x_j - x_i + S @ cell: forces from the two ends of each edge, and the strain
        derivative sum_e r_e (x) dE/dr_e (edge vectors move as r (1 + strain))."""
        atomic, vec, grad = self.network.energy_gradient(graph, graph.positions, graph.cell)
        i, j = graph.edge_index[0], graph.edge_index[1]
        e_net = _per_structure(graph, atomic)
        forces = torch.zeros_like(graph.positions).index_add_(0, i, grad).index_add_(
            0, j, grad, alpha=-1.0)
        out = Prediction(energy=e_net.to(torch.float64) + self.reference_energy(graph),
                         forces=forces, atomic=self._atomic(graph, atomic))
        if stress:
            virial = _per_structure(graph, vec.unsqueeze(2) * grad.unsqueeze(1),
                                    graph.batch.index_select(0, i))
            out.stress = _per_volume(graph, 0.5 * (virial + virial.transpose(1, 2)))
        return out

    def _atomic(self, graph: Graph, atomic: Tensor) -> Tensor:
        """Per-atom energies with each atom's reference energy (float64)."""
        return atomic.to(torch.float64) + self.energy_refs.index_select(0, graph.species)

    def set_energy_refs(self, refs: dict[str, float]) -> None:
        """Set per-element reference energies (eV/atom)."""
        for symbol, value in refs.items():
            self.energy_refs[atomic_numbers[symbol]] = float(value)

    def get_energy_refs(self) -> dict[str, float]:
        """Per-element reference energies (eV/atom) of the model's elements."""
        return {s: float(self.energy_refs[atomic_numbers[s]]) for s in self.elements}
