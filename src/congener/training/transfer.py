"""Transfer between congener elements: each step is one small function that reports its change.

- `map_species`: a target-element potential initialised from a source potential (all weights
  copied; the target's embedding row starts as the source element's row, or fresh).
- `freeze` / `lr_scales`: hard freezing (requires_grad=False) or soft freezing (a learning-rate
  factor) of parts selected by name: `embedding`, `interactions`, `interaction:<k>`, `outputs`,
  `output:<k>`, `basis`, or any fnmatch pattern over parameter names (`network.lin*`).
- Energy references are refitted on the target data by the trainer (`fit_energy_refs`).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence

import torch
from ase.data import atomic_numbers

from congener.errors import ConfigError, DataError
from congener.models.potential import Potential

PARTS = {
    "embedding": ["network.embedding.*"],
    "interactions": ["network.interactions.*"],
    "outputs": ["network.outputs.*"],
    "basis": ["network.rbf.*", "network.sbf.*"],
}


def map_species(source: Potential, mapping: dict[str, str], *, fresh_embedding: bool = False,
                seed: int = 0) -> Potential:
    """A copy of `source` for new elements; `mapping` is {source element: target element}.

    The target's embedding row is the source element's row (default) or a fresh random one.
    Reference energies of the targets start at the sources' values (refit them on target data).
    """
    for src, dst in mapping.items():
        if src not in source.elements:
            raise DataError(f"source model knows {', '.join(source.elements)}, not {src}")
        if dst not in atomic_numbers:
            raise DataError(f"unknown target element {dst!r}")
    target = copy.deepcopy(source)
    elements = [mapping.get(e, e) for e in source.elements]
    new = Potential(target.network, elements).to(next(source.parameters()).device)
    new.energy_refs.copy_(source.energy_refs)
    emb = new.network.embedding.emb.weight
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for src, dst in mapping.items():
            z_src, z_dst = atomic_numbers[src], atomic_numbers[dst]
            if fresh_embedding:
                fresh = torch.empty(emb.shape[1]).uniform_(-3**0.5, 3**0.5, generator=generator)
                emb[z_dst] = fresh.to(emb)
            else:
                emb[z_dst] = emb[z_src]
            new.energy_refs[z_dst] = source.energy_refs[z_src]
    new.metadata = {"transfer_from": list(source.elements), "mapping": dict(mapping),
                    "fresh_embedding": fresh_embedding}
    return new


def select(potential: Potential, parts: Sequence[str]) -> list[str]:
    """Names of the parameters matched by `parts` (see module docstring). Unknown -> error."""
    names = [n for n, _ in potential.named_parameters()]
    chosen: list[str] = []
    n_blocks = len(potential.network.interactions)
    for part in parts:
        kind, _, index = part.partition(":")
        if kind in ("interaction", "output") and index:
            if not index.isdigit() or int(index) >= n_blocks + (kind == "output"):
                raise ConfigError(f"freeze: no {kind} block {index!r} (model has {n_blocks} "
                                  "interaction and one more output blocks)")
            patterns = [f"network.{kind}s.{int(index)}.*"]
        else:
            patterns = PARTS.get(part, [part])
        matched = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
        if not matched:
            raise ConfigError(f"freeze: {part!r} matches no parameter (parts: "
                              f"{', '.join(PARTS)}, interaction:<k>, output:<k>, or a pattern)")
        chosen += [n for n in matched if n not in chosen]
    return chosen


def freeze(potential: Potential, parts: Sequence[str]) -> list[str]:
    """Set requires_grad=False on the selected parameters; returns their names."""
    chosen = set(select(potential, parts))
    for name, p in potential.named_parameters():
        if name in chosen:
            p.requires_grad_(False)
    return sorted(chosen)


def lr_scales(potential: Potential, parts: Sequence[str], scale: float) -> dict[str, float]:
    """Soft freezing: learning-rate factor `scale` for the selected parameters."""
    if not 0 <= scale <= 1:
        raise ConfigError(f"soft-freeze scale must be in [0, 1] (got {scale})")
    return dict.fromkeys(select(potential, parts), scale)
