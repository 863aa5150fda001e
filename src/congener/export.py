"""Export a congener potential as a metatomic TorchScript model (ASE, torch-sim, LAMMPS).

The file holds an `AtomisticModel` (metatomic-torch) over `MetatomicDimeNet`: the engine
computes a full, strict neighbour list at the model's cutoff and passes it in each `System`;
the model returns the energy (eV) per structure or per atom (reference energies included),
and the engine takes forces and stress by autograd through the neighbour list's distance
vectors (metatomic registers them as functions of positions and cell). Atom types are atomic
numbers, which index the DimeNet++ embedding and the reference energies directly.

`selected_atoms` (domain decomposition in LAMMPS) restricts the energy to those atoms; the
other atoms (ghosts) are neighbours only. `interaction_range` is (blocks + 1) x cutoff: an
atom's energy reads the messages of its edges, and each interaction block reaches one edge
further.

No `from __future__ import annotations` here: `AtomisticModel` checks `forward`'s annotations
as objects, against `typing.List`/`Dict`/`Optional` (hence the `noqa: UP006, UP045`).
"""

import json
from pathlib import Path
from typing import Dict, List, Optional  # noqa: UP035 (AtomisticModel compares these types)

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)
from torch import nn

from congener import __version__
from congener.errors import ConfigError
from congener.files import atomic_write, output_file
from congener.models.dimenet import DimeNetPP
from congener.models.dimenet_script import ScriptDimeNet
from congener.models.potential import Potential

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_REFERENCES = {
    "architecture": ["J. Gasteiger, S. Giri, J. T. Margraf, S. Günnemann, Fast and "
                     "uncertainty-aware directional message passing for non-equilibrium "
                     "molecules, arXiv:2011.14115 (2020)"],
    "implementation": [f"congener {__version__}"],
}


class MetatomicDimeNet(nn.Module):
    """A DimeNet++ `Potential` behind metatomic's model interface (see module doc)."""

    def __init__(self, potential: Potential) -> None:
        super().__init__()
        self.network = ScriptDimeNet(potential.network)
        self.register_buffer("energy_refs", potential.energy_refs.detach().clone())  # float64
        self.neighbors = NeighborListOptions(cutoff=potential.cutoff, full_list=True,
                                             strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:  # noqa: UP006
        """One full, strict neighbour list at the DimeNet++ cutoff (Å)."""
        return [self.neighbors]

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],  # noqa: UP006
                selected_atoms: Optional[Labels]) -> Dict[str, TensorMap]:  # noqa: UP006, UP045
        """The "energy" output (eV, model dtype): samples "system", or ("system", "atom")
        when asked per atom; over `selected_atoms` only when given."""
        if "energy" not in outputs or len(systems) == 0:
            return {}
        dtype, device = systems[0].positions.dtype, systems[0].positions.device
        types, first, second, shifts, vectors, owner = [], [], [], [], [], []
        offset = 0
        offsets: list[int] = []
        for k, system in enumerate(systems):
            block = system.get_neighbor_list(self.neighbors)
            pairs = block.samples.values.to(torch.long)  # first, second, cell shift a, b, c
            n = len(system)
            types.append(system.types.to(torch.long))
            first.append(pairs[:, 0] + offset)
            second.append(pairs[:, 1] + offset)
            shifts.append(pairs[:, 2:])
            vectors.append(block.values.reshape(-1, 3))
            owner.append(torch.full((n,), k, dtype=torch.long, device=device))
            offsets.append(offset)
            offset += n
        species = torch.cat(types)
        atomic = self.network(species, torch.cat(first), torch.cat(second), torch.cat(shifts),
                              torch.cat(vectors))
        energies = atomic.to(torch.float64) + self.energy_refs.index_select(0, species)
        system_of = torch.cat(owner)
        atom_of = torch.arange(offset, device=device) - torch.tensor(
            offsets, device=device).index_select(0, system_of)
        if selected_atoms is not None:
            chosen = selected_atoms.values.to(torch.long).to(device)
            rows = torch.tensor(offsets, device=device).index_select(0, chosen[:, 0]) \
                + chosen[:, 1]
            energies = energies.index_select(0, rows)
            system_of, atom_of = chosen[:, 0], chosen[:, 1]
        properties = Labels(["energy"], torch.zeros((1, 1), dtype=torch.int32, device=device))
        if outputs["energy"].sample_kind == "atom":
            samples = Labels(["system", "atom"],
                             torch.stack([system_of, atom_of], 1).to(torch.int32))
            values = energies.to(dtype).unsqueeze(1)
        else:
            samples = Labels(["system"], torch.arange(len(systems), dtype=torch.int32,
                                                      device=device).unsqueeze(1))
            total = torch.zeros(len(systems), dtype=torch.float64, device=device)
            values = total.index_add(0, system_of, energies).to(dtype).unsqueeze(1)
        block = TensorBlock(values=values, samples=samples, components=[],
                            properties=properties)
        keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
        return {"energy": TensorMap(keys, [block])}


def atomistic_model(potential: Potential) -> AtomisticModel:
    """The metatomic `AtomisticModel` of a DimeNet++ potential, in the potential's dtype;
    `ConfigError` for another model family (their code does not compile with TorchScript)."""
    network = potential.network
    if not isinstance(network, DimeNetPP):
        family = getattr(network, "family", type(network).__name__)
        raise ConfigError(f"export supports DimeNet++ models only (got {family}: its code "
                          "does not compile with TorchScript)")
    dtype = next(network.parameters()).dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"export needs a float32 or float64 model (got {dtype})")
    module = MetatomicDimeNet(potential).cpu().eval()  # copies: `potential` stays as it is
    numbers = [int(z) for z in potential.allowed.nonzero().flatten().tolist()]
    cutoff = potential.cutoff
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(unit="eV", sample_kind="atom")},
        atomic_types=numbers,
        interaction_range=(len(network.interactions) + 1) * cutoff,
        length_unit="angstrom",
        supported_devices=["cuda", "cpu"],
        dtype=_DTYPES[dtype],
    )
    source = str(getattr(potential, "metadata", {}).get("source", ""))
    metadata = ModelMetadata(
        name=f"congener DimeNet++ ({'-'.join(potential.elements)})",
        description=f"DimeNet++ potential for {', '.join(potential.elements)}, cutoff "
                    f"{cutoff:g} Å, exported by congener {__version__}",
        references=_REFERENCES,
        extra={"congener_version": __version__, "elements": ",".join(potential.elements),
               "cutoff": f"{cutoff:g}", "config": json.dumps(network.config()),
               "energy_refs": json.dumps(potential.get_energy_refs()), "source": source},
    )
    return AtomisticModel(module, metadata, capabilities)


def export_potential(potential: Potential, path: str | Path) -> Path:
    """Write `potential` (DimeNet++) as a metatomic TorchScript model file at `path`, in the
    potential's dtype, for ASE (metatomic-ase), torch-sim and LAMMPS (pair_style metatomic).
    Returns the path; the file is written atomically."""
    model = atomistic_model(potential)
    path = output_file(path)
    with atomic_write(path) as tmp:
        model.save(str(tmp))
    return path
