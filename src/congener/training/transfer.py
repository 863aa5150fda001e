"""Transfer between congener elements: each step is one small function that reports its change.

- `map_species`: a target-element potential initialised from a source potential (all weights
  copied; the target's embedding row starts as the source element's row, or fresh).
- `restrict_elements`: the same potential with its element table narrowed to the elements of
  the target data (a fine-tuned foundation model knows what it was fine-tuned on).
- `freeze` / `lr_scales`: hard freezing (requires_grad=False) or soft freezing (a learning-rate
  factor) of parts, in the words of Radova et al.'s mace-freeze and the family's own block
  names (`Network.blocks()`, in the order data flows through them):
    `first:N` / `last:N`   the first (or last) N blocks;
    a block name           `interaction:2` (DimeNet++), `atom_conv:0`, `readout` (CHGNet) ...;
    an alias               `interactions`, `outputs`, `embeddings` ... (`block_aliases()`);
    a pattern              fnmatch over block names (`atom_conv:*`) or, failing that, over
                           parameter names (`network.lin*`).
  `describe_blocks` lists the blocks with their parameter counts (`--list-blocks`).
- Energy references are refitted on the target data by the trainer (`fit_energy_refs`; the
  training configuration's `refs` says keep, refit or train).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence

import torch
from ase.data import atomic_numbers

from congener.errors import ConfigError, DataError
from congener.models.family import block_parameters
from congener.models.potential import Potential


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


def _blocks(potential: Potential) -> list[tuple[str, list[str]]]:
    """(block, full parameter names) in the family's order."""
    return [(name, [f"network.{p}" for p in params])
            for name, params in block_parameters(potential.network)]


def describe_blocks(potential: Potential) -> list[tuple[str, int]]:
    """Each block with its number of parameters (scalars), in the family's order."""
    sizes = {n: p.numel() for n, p in potential.named_parameters()}
    return [(name, sum(sizes[p] for p in params)) for name, params in _blocks(potential)]


def _part(part: str, blocks: list[tuple[str, list[str]]], aliases: dict[str, list[str]],
          names: list[str]) -> list[str]:
    """Parameter names of one freezing part (see module doc)."""
    by_name = dict(blocks)
    kind, sep, count = part.partition(":")
    if sep and kind in ("first", "last"):
        if not count.lstrip("-").isdigit() or not 0 < abs(int(count)) <= len(blocks):
            raise ConfigError(f"freeze: {part!r} needs a count of blocks in 1..{len(blocks)}")
        n = int(count)
        chosen = blocks[:n] if (kind == "first") == (n > 0) else blocks[-abs(n):]
        return [p for _, params in chosen for p in params]
    if part in by_name:
        return list(by_name[part])
    if part in aliases:
        return [p for b in aliases[part] for p in by_name.get(b, [])]
    matched = [b for b, _ in blocks if fnmatch.fnmatchcase(b, part)]
    if matched:
        return [p for b in matched for p in by_name[b]]
    return [n for n in names if fnmatch.fnmatchcase(n, part)]


def select(potential: Potential, parts: Sequence[str]) -> list[str]:
    """Names of the parameters matched by `parts` (see module doc). Unknown -> error."""
    names = [n for n, _ in potential.named_parameters()]
    blocks = _blocks(potential)
    aliases = potential.network.block_aliases()
    chosen: list[str] = []
    for part in parts:
        matched = _part(part, blocks, aliases, names)
        if not matched:
            listed = ", ".join(b for b, _ in blocks)
            raise ConfigError(f"freeze: {part!r} matches no block or parameter of this "
                              f"{potential.network.family} model (blocks: {listed}; aliases: "
                              f"{', '.join(aliases) or 'none'}; or first:N, last:N, a pattern)")
        chosen += [n for n in matched if n not in chosen]
    return chosen


def restrict_elements(potential: Potential, elements: Sequence[str]) -> Potential:
    """`potential` with its element table narrowed to `elements` (which it must know); the
    network and reference energies are shared, not copied."""
    unknown = [e for e in elements if e not in potential.elements]
    if unknown:
        raise DataError(f"the model knows {_short(potential.elements)}, not "
                        f"{', '.join(unknown)}")
    new = Potential(potential.network, elements).to(potential.energy_refs.device)
    new.energy_refs.copy_(potential.energy_refs)
    new.metadata = dict(getattr(potential, "metadata", {}))
    return new


def start_from(source: Potential, mapping: dict[str, str] | None, elements: Sequence[str], *,
               fresh_embedding: bool = False, seed: int = 0) -> Potential:
    """The starting model of a fine-tuning on data with `elements`: the source with its
    elements mapped (`map_species`, DimeNet++ sources) when `mapping` is given, narrowed to
    `elements` (a foundation model fine-tuned on Ge is a Ge model)."""
    family = source.network.family
    if mapping:
        if family != "dimenet++":
            raise ConfigError(f"a {family} model embeds every element of its table already; "
                              "--map starts a new element from a congener DimeNet++ model")
        source = map_species(source, mapping, fresh_embedding=fresh_embedding, seed=seed)
    elif fresh_embedding:
        raise ConfigError("--fresh-embedding applies to the elements named by --map")
    missing = [e for e in elements if e not in source.elements]
    if missing:
        hint = ("; give --map SOURCE=TARGET (e.g. --map Si=Ge) to start it from a known element"
                if family == "dimenet++" else f": outside the {family} element table")
        raise DataError(f"the source model knows {_short(source.elements)}, not "
                        f"{', '.join(missing)}{hint}")
    return restrict_elements(source, elements)


def _short(elements: Sequence[str]) -> str:
    return ", ".join(elements) if len(elements) <= 10 else f"{len(elements)} elements " \
        f"({elements[0]} to {elements[-1]})"


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
