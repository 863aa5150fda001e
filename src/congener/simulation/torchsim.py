"""congener potentials as torch-sim models: batched MD, relaxation and many-system runs.

`CongenerModel` wraps any congener `Potential` (DimeNet++, CHGNet, SevenNet, ...) in
torch-sim's `ModelInterface`, so that torch-sim's integrators (`ts.nve`, `ts.nvt_langevin`,
`ts.npt_langevin`), optimizers (`ts.optimizers.fire`, `ts.frechet_cell_fire`) and runners
(`ts.integrate`, `ts.optimize`, `ts.static`, autobatching) drive a congener model.

Conventions (torch-sim 0.3.0, "metal" units; the same as ASE's and congener's):
- Input: a `ts.SimState` (or its dict), many systems in one flat batch; `system_idx` [N] gives
  each atom's system. `state.cell` [B,3,3] holds lattice vectors as *columns*; congener's
  `Graph.cell` holds them as rows, so the wrapper reads `state.row_vector_cell`.
  `state.pbc` is one flag for every axis and system (torch-sim 0.3.0 has no per-axis
  periodicity: `ts.io.atoms_to_state` turns a slab (T, T, F) into a non-periodic state).
- Output: "energy" [B] eV, "forces" [N,3] eV/Å, "stress" [B,3,3] eV/Å³ when
  `compute_stress`, all detached, on `model.device`, in `model.dtype` (torch-sim keeps a
  state in one dtype, so the energy, float64 inside congener, is cast; use float64 where
  energies of ~-300 eV per cell must keep meV changes, e.g. NVE conservation checks).
- Stress sign: sigma = (1/V) dE/d(strain), positive under tension. This is torch-sim's own
  definition (`ts.quantities.get_pressure`: P = -tr(sigma)/3 + kinetic term; its SevenNet
  wrapper flips SevenNet's native sign to reach it, its MACE wrapper passes ASE's stress
  through), and it is what `Potential` returns, so no sign flip is applied. Forces and stress
  come from one evaluation (`Potential(graph, stress=True)`).
- Non-periodic states have no stress: `compute_stress=True` on one raises `ValueError`;
  build the model with `compute_stress=False` for molecules and clusters.

Neighbours: the graph is rebuilt from the state on every call with congener's own
`build_graph` (vesin on the host, plus the reverse-edge pairing DimeNet++ needs, which
torch-sim's neighbour lists do not give). The state's tensors become ASE `Atoms` only as a
container for that call (about 0.02 ms of a 0.4 ms build for two 8-atom cells, next to 5 ms
for the smallest DimeNet++; measured on the 2-core CPU box). A rebuild on every call is always
correct with torch-sim's integrators, which wrap positions into the cell after every drift
and change cells in NPT and cell relaxation; a skin list (as in `integrator.py`) would have to
detect both.

Example: NVT at 600 K and a FIRE relaxation with a congener checkpoint::

    import ase.build
    import torch_sim as ts
    from congener.simulation.torchsim import CongenerModel

    model = CongenerModel.from_checkpoint("runs/si/model.pt", dtype="float64")
    # or: CongenerModel(potential) for a Potential in memory; "chgnet:0.3.0" also works
    systems = [ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)] * 4
    final = ts.integrate(system=systems, model=model, integrator=ts.nvt_langevin,
                         n_steps=1000, temperature=600.0, timestep=0.001)  # K, ps
    relaxed = ts.optimize(system=final, model=model, optimizer=ts.frechet_cell_fire,
                          convergence_fn=ts.generate_force_convergence_fn(0.02))
    atoms = relaxed.to_atoms()  # back to ASE
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from torch_sim.models.interface import ModelInterface
from torch_sim.state import SimState
from torch_sim.typing import StateDict

from congener.graph import Graph, build_graph
from congener.models.potential import Potential
from congener.models.registry import load_source
from congener.runtime import resolve_device, resolve_dtype


def state_graph(state: SimState, cutoff: float) -> Graph:
    """Neighbour graph (float64, CPU) of every system in `state`, atoms in the state's order.

    torch-sim keeps each system's atoms contiguous (`SimState` refuses anything else), as
    `Graph` does. Positions may lie outside the cell (torch-sim wraps them; congener does
    not need it).
    """
    positions = state.positions.detach().cpu().to(torch.float64).numpy()
    numbers = state.atomic_numbers.detach().cpu().numpy()
    cells = state.row_vector_cell.detach().cpu().to(torch.float64).numpy()
    counts = torch.bincount(state.system_idx.detach().cpu(), minlength=len(cells))
    bounds = np.concatenate([[0], np.cumsum(counts.numpy())])
    periodic = bool(state.pbc)  # torch-sim 0.3.0: one flag for all axes and systems
    atoms = [Atoms(numbers=numbers[a:b], positions=positions[a:b], cell=cells[k], pbc=periodic)
             for k, (a, b) in enumerate(itertools.pairwise(bounds))]
    return build_graph(atoms, cutoff)


class CongenerModel(ModelInterface):
    """A congener `Potential` as a torch-sim model (see the module docstring).

    `device` and `dtype` default to the potential's own; when they differ, the model holds a
    moved copy and the caller's potential is left as it was. Forces are always computed;
    stress when `compute_stress` (settable, as `validate_model_outputs` expects).
    """

    def __init__(self, potential: Potential, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, compute_stress: bool = True) -> None:
        super().__init__()
        param = next(potential.parameters())
        # an empty tensor normalises the name ("cuda" -> "cuda:0") before comparing
        device = torch.empty(0, device=device or param.device).device
        dtype = dtype or param.dtype
        if param.device != device or param.dtype != dtype:
            potential = copy.deepcopy(potential).to(device=device, dtype=dtype)
        self.potential = potential.eval()
        self._device = device
        self._dtype = dtype
        self._compute_forces = True
        self._compute_stress = bool(compute_stress)

    @classmethod
    def from_checkpoint(cls, source: str | Path, *, device: str = "auto",
                        dtype: str = "float64", compute_stress: bool = True
                        ) -> CongenerModel:
        """Load a congener checkpoint or a foundation model by name (`chgnet:0.3.0`,
        `sevennet:7net-0`; see `models.registry.load_source`)."""
        potential = load_source(source, device=resolve_device(device),
                                dtype=resolve_dtype(dtype))
        return cls(potential, compute_stress=compute_stress)

    @property
    def compute_stress(self) -> bool:
        """Whether `forward` returns "stress"."""
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, compute_stress: bool) -> None:
        self._compute_stress = bool(compute_stress)

    @property
    def cutoff(self) -> float:
        """Neighbour cutoff of the potential (Å)."""
        return self.potential.cutoff

    def forward(self, state: SimState | StateDict, **_: object) -> dict[str, Tensor]:
        """Energy [B] eV, forces [N,3] eV/Å and, with `compute_stress`, stress [B,3,3] eV/Å³
        (positive under tension) of every system in `state`, in one evaluation."""
        if isinstance(state, dict):
            masses = torch.ones_like(state["positions"][:, 0])
            state = SimState(**{"masses": masses, **state})
        if self._compute_stress and not bool(state.pbc):
            raise ValueError("stress needs periodic cells; use CongenerModel(..., "
                             "compute_stress=False) for non-periodic systems")
        # autograd (every family but DimeNet++) needs tensors made outside inference mode
        with torch.inference_mode(False):
            graph = state_graph(state, self.potential.cutoff).to(self._device, self._dtype)
            out = self.potential(graph, stress=self._compute_stress)
        results = {"energy": out.energy.detach().to(self._dtype),
                   "forces": out.forces.detach()}
        if self._compute_stress:
            results["stress"] = out.stress.detach()
        return results
