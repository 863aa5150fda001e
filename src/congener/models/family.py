"""What every model family brings to the `Potential` contract: the `Network` base class.

A family (DimeNet++, CHGNet, SevenNet, ...) is an `nn.Module` subclass of `Network` that maps
a congener `Graph` and (possibly strained, differentiable) positions and cell to per-atom
energies in eV, without the per-element reference energies, which the `Potential` holds for
every family alike. Everything else a family differs in is declared here:

- `family` (class attribute): the name under which checkpoints store it;
- `cutoff`: the radius congener builds its `Graph` with (a family that builds its own graphs,
  as CHGNet does, may ignore the graph's edges and use positions, cell, species and batch);
- `config()` / `from_config()`: a JSON-able description that rebuilds the architecture (the
  weights travel as a state dict);
- `blocks()`: the named parameter blocks in the order the data flows through them (input to
  output), for freezing the first or last N blocks, named blocks and soft freezing; each block
  lists fnmatch patterns over the network's parameter names; `block_aliases()` names groups;
- `supported_elements()`: the chemical symbols the architecture can embed;
- `prepare(graph)`: host work on a graph's edges done once for many passes (DimeNet++: its
  triplet layout), so that MD on a GPU reads nothing back between neighbour-list builds;
- `explicit_gradient` (class attribute) and `energy_gradient()`: a family that writes the
  energy gradient by hand (DimeNet++) says so by its class; `Potential` then uses it for
  energies and forces outside training, and autograd everywhere else.
"""

from __future__ import annotations

import fnmatch
from typing import Any, ClassVar

from ase.data import chemical_symbols
from torch import Tensor, nn

from congener.graph import Graph


class Network(nn.Module):
    """Base class of model families (see module doc). Subclasses implement `forward`,
    `cutoff`, `config`, `from_config` and `blocks`."""

    family: ClassVar[str] = ""
    explicit_gradient: ClassVar[bool] = False

    @property
    def cutoff(self) -> float:
        raise NotImplementedError

    def forward(self, graph: Graph, positions: Tensor, cell: Tensor) -> Tensor:
        """Per-atom energies [N] (eV, references excluded), differentiable with respect to
        `positions` [N,3] and `cell` [B,3,3] (which may carry a strain for the stress)."""
        raise NotImplementedError

    def energy_gradient(self, graph: Graph, positions: Tensor, cell: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """Atomic energies [N], edge vectors [E,3] and dE/d(edge vectors) [E,3] without
        autograd; only for classes with `explicit_gradient = True`."""
        raise NotImplementedError(f"{type(self).__name__} has no hand-written gradient")

    def prepare(self, graph: Graph, on: Graph | None = None) -> None:
        """Do the host work that depends on `graph`'s edges alone, once, before several passes
        over the same edges at other positions (MD between neighbour-list builds); `on` is
        the same graph on another device, for which the work is kept. Default: nothing (a
        family that needs no such work, or builds its own graphs)."""

    def config(self) -> dict[str, Any]:
        """JSON-able settings that `from_config` rebuilds the architecture from."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Network:
        """A network of this family with the architecture of `config` (weights random)."""
        raise NotImplementedError

    def blocks(self) -> list[tuple[str, list[str]]]:
        """Named parameter blocks from input to output: (name, fnmatch patterns over
        `named_parameters()` of this network)."""
        raise NotImplementedError

    def block_aliases(self) -> dict[str, list[str]]:
        """Names of groups of blocks (e.g. "interactions"): alias -> block names."""
        return {}

    def supported_elements(self) -> list[str]:
        """Chemical symbols the architecture can embed (default: H to Pu)."""
        return list(chemical_symbols[1:95])


def jsonable(value: Any) -> Any:
    """`value` as JSON types (for `Network.config()`): str-keyed dicts, lists for tuples,
    tensors and numpy arrays, Python scalars for numpy scalars; anything else as its str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # tensors, numpy
        return jsonable(value.tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def block_parameters(network: Network) -> list[tuple[str, list[str]]]:
    """Each block of `network` with the names of the parameters it holds (relative to the
    network), in the network's order; a parameter belongs to the first block that matches it."""
    names = [n for n, _ in network.named_parameters()]
    taken: set[str] = set()
    out = []
    for block, patterns in network.blocks():
        members = [n for n in names if n not in taken
                   and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        taken.update(members)
        out.append((block, members))
    return out
