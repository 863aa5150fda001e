"""ASE Calculator over a congener Potential (works in ASE MD, optimisers and phonopy)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from congener.graph import build_graph
from congener.models.potential import Potential
from congener.models.registry import load_source
from congener.runtime import resolve_device, resolve_dtype


class CongenerCalculator(Calculator):
    """Energy (eV), forces (eV/Å) and stress (eV/Å³, Voigt, ASE sign) from a Potential."""

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "energies",
                                                   "forces", "stress"]

    def __init__(self, potential: Potential, *, device: str = "auto", dtype: str = "float64",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        param = next(potential.parameters())
        if param.device != self.device or param.dtype != self.dtype:
            # a copy: the caller's potential stays where and as it was
            potential = copy.deepcopy(potential).to(device=self.device, dtype=self.dtype)
        self.potential = potential.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", dtype: str = "float64"
                        ) -> CongenerCalculator:
        """Load a checkpoint written by `congener train` / `save_potential`, or a foundation
        model by name (`chgnet:0.3.0`, `sevennet:7net-0`, see `models.registry`)."""
        return cls(load_source(path, dtype=resolve_dtype(dtype)), device=device, dtype=dtype)

    def calculate(self, atoms: Atoms | None = None, properties: list[str] | None = None,
                  system_changes: list[str] = all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        # stress with the forces in one pass whenever the cell has a volume (ASE asks for it
        # separately; one more strain derivative is cheap next to a second evaluation); for
        # slabs it is over the whole cell, vacuum included, as DFT codes give it
        want_stress = bool(self.atoms.pbc.any()) and self.atoms.cell.rank == 3
        graph = build_graph(self.atoms, self.potential.cutoff).to(self.device, self.dtype)
        with torch.inference_mode(False):
            out = self.potential(graph, stress=want_stress)
        energy = float(out.energy[0])
        self.results = {"energy": energy, "free_energy": energy,
                        "energies": out.atomic.detach().cpu().double().numpy(),
                        "forces": out.forces.detach().cpu().double().numpy()}
        if want_stress:
            s = out.stress[0].detach().cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2],
                                               s[1, 2], s[0, 2], s[0, 1]])
