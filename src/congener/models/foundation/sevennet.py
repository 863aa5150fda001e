"""SevenNet (Park et al. 2024, the `sevenn` package; NequIP-style E(3)-equivariant message
passing) as a congener model family.

`SevenNetNetwork` holds SevenNet's `AtomGraphSequential` as its submodule `model` (SevenNet's
own parameter names under the prefix `model.`, so `model.0_convolution.weight_nn...`) and the
architecture config it was built from. It runs SevenNet's modules from the edge embedding on:

- the edges are congener's (`Graph.edge_index`, centre i -> neighbour j, the same convention
  as SevenNet's `edge_index`), and the edge vectors x_j - x_i + S @ cell are computed here from
  the given, possibly strained and differentiable, positions and cell, so forces and stress
  follow from congener's one autograd call; no second neighbour search. Edges longer than the
  cutoff (a graph built with an MD skin) are dropped: SevenNet's envelopes are polynomials that
  do not vanish beyond the cutoff;
- the one-hot of the atom types is built here in the positions' dtype (SevenNet's own one-hot
  module always gives float32), so `.to(torch.float64)` runs every step in float64;
- SevenNet's total-energy sum and force/stress module are skipped: congener sums per
  structure and differentiates itself.

Energies: SevenNet's atomic energy is scale[Z] * output + shift[Z]. The network keeps the
scale and sets its shift to zero; `load` moves shift[Z] into the `Potential`'s
`energy_refs`, so the totals are SevenNet's.

Foundation models (`load(variant)`, weights shipped inside the sevenn wheel, no network
access): `7net-0` (SevenNet-0, 11Jul2024), `7net-0_22May2024`, `7net-l3i5`, and the
multi-fidelity SevenNet-MF-0 with its fidelity chosen by the name: `7net-mf-0-pbe`
(PBE/PBE+U, the MPtrj labels) or `7net-mf-0-r2scan`. The fidelity is part of the network's
config (`modal`); every structure of a batch uses it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from ase.data import chemical_symbols
from torch import Tensor

from congener.errors import ConfigError, DataError
from congener.graph import Graph
from congener.models.family import Network, jsonable
from congener.models.potential import Potential

# congener variant -> (sevenn pretrained name, fidelity or None)
_SHIPPED = {
    "7net-0": ("7net-0", None),
    "7net-0_22May2024": ("7net-0_22may2024", None),
    "7net-l3i5": ("7net-l3i5", None),
    "7net-mf-0-pbe": ("7net-mf-0", "PBE"),
    "7net-mf-0-r2scan": ("7net-mf-0", "R2SCAN"),
}
VARIANTS = tuple(_SHIPPED)

# SevenNet modules that congener replaces: the one-hot of the atom types (built here in the
# network's dtype), the total-energy sum and the autograd force/stress output
_SKIPPED = ("onehot_idx_to_onehot", "reduce_total_enegy", "force_output")
_NO_PARAMETERS = ("reduce_total_enegy", "force_output")  # removed from the model itself
_READOUT = ("reduce_input_to_hidden", "reduce_hidden_to_energy", "readout_FCN",
            "rescale_atomic_energy")
_TP_BACKENDS = {"cuequivariance_config": {}, "use_flash_tp": False, "use_oeq": False,
                "_flash_lammps": False}


def _keys():
    import sevenn._keys as key

    return key


def _model_keys() -> set[str]:
    """The keys of a SevenNet config that `build_E3_equivariant_model` reads."""
    import sevenn._const as const

    key = _keys()
    return set(const.DEFAULT_E3_EQUIVARIANT_MODEL_CONFIG) | {
        key.TYPE_MAP, key.NUM_SPECIES, key.CHEMICAL_SPECIES, key.SHIFT, key.SCALE,
        key.CONV_DENOMINATOR, key.USE_MODALITY, key.MODAL_MAP, key.NUM_MODALITIES,
        key.USE_MODAL_WISE_SHIFT, key.USE_MODAL_WISE_SCALE, key.READOUT_FCN_HIDDEN_NEURONS,
        key.READOUT_FCN_ACTIVATION,
    }


def _complete(config: dict[str, Any]) -> dict[str, Any]:
    """A SevenNet model config from a congener one: JSON's string keys of the type and modal
    maps back to their types, SevenNet's defaults for missing architecture keys, the type map
    from `chemical_species` when missing, and no tensor-product accelerators."""
    import sevenn._const as const
    from sevenn.nn.node_embedding import get_type_mapper_from_specie

    key = _keys()
    cfg = copy.deepcopy(dict(config))
    cfg.pop("modal", None)
    defaults = copy.deepcopy(const.DEFAULT_E3_EQUIVARIANT_MODEL_CONFIG)
    cfg.setdefault(key.READOUT_AS_FCN, defaults[key.READOUT_AS_FCN])
    if not cfg[key.READOUT_AS_FCN]:  # as sevenn's model_defaults, which edits its globals
        defaults.pop(key.READOUT_FCN_ACTIVATION, None)
        defaults.pop(key.READOUT_FCN_HIDDEN_NEURONS, None)
    else:  # sevenn's defaults, which an earlier model_defaults call may have removed
        cfg.setdefault(key.READOUT_FCN_HIDDEN_NEURONS, [30, 30])
        cfg.setdefault(key.READOUT_FCN_ACTIVATION, "relu")
    for k, v in defaults.items():
        cfg.setdefault(k, v)
    if cfg.get(key.TYPE_MAP):
        cfg[key.TYPE_MAP] = {int(z): int(i) for z, i in cfg[key.TYPE_MAP].items()}
    elif cfg.get(key.CHEMICAL_SPECIES):
        cfg[key.TYPE_MAP] = get_type_mapper_from_specie(list(cfg[key.CHEMICAL_SPECIES]))
    else:
        raise ConfigError("a SevenNet config needs `chemical_species` or `_type_map`")
    cfg[key.NUM_SPECIES] = len(cfg[key.TYPE_MAP])
    cfg.setdefault(key.CHEMICAL_SPECIES,
                   [chemical_symbols[z] for z in sorted(cfg[key.TYPE_MAP])])
    cfg.setdefault(key.SHIFT, 0.0)
    cfg.setdefault(key.SCALE, 1.0)
    denominator = cfg.get(key.CONV_DENOMINATOR)
    if isinstance(denominator, str) or denominator is None:
        raise ConfigError(f"SevenNet `conv_denominator` must be a number or a list of numbers "
                          f"(one per layer), not {denominator!r}; it is a data statistic "
                          "(e.g. sqrt of the average number of neighbours)")
    if cfg.get(key.USE_MODALITY):
        cfg[key.MODAL_MAP] = {str(m): int(i) for m, i in cfg[key.MODAL_MAP].items()}
        cfg[key.NUM_MODALITIES] = len(cfg[key.MODAL_MAP])
        cfg.setdefault(key.USE_MODAL_WISE_SHIFT, False)
        cfg.setdefault(key.USE_MODAL_WISE_SCALE, False)
    cfg.update(copy.deepcopy(_TP_BACKENDS))
    return cfg


def _build(config: dict[str, Any]):
    """SevenNet's `AtomGraphSequential` for a completed config, without the modules congener
    replaces that hold no parameters."""
    from sevenn.model_build import build_E3_equivariant_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_E3_equivariant_model(copy.deepcopy(config))
    for name in _NO_PARAMETERS:
        model.delete_module_by_key(name)
    return model


class SevenNetNetwork(Network):
    """SevenNet's model (`model`, an `AtomGraphSequential`) on congener's graphs: per-atom
    energies in eV without the per-species shift (see module doc).

    Build with `from_config(config)` (a SevenNet model config: `chemical_species` or
    `_type_map`, `cutoff`, `channel`, `lmax`, `num_convolution_layer`, `conv_denominator`,
    ...; SevenNet's defaults fill the rest; per-species `shift`/`scale` lists follow
    SevenNet's type order, the chemical symbols sorted alphabetically) or from a loaded
    SevenNet model and its config.
    A multi-fidelity model needs `modal`, the fidelity every structure is evaluated at.
    """

    family = "sevennet"

    def __init__(self, model: torch.nn.Module, config: dict[str, Any],
                 modal: str | None = None) -> None:
        super().__init__()
        key = _keys()
        for name in _NO_PARAMETERS:
            model.delete_module_by_key(name)
        self.model = model
        self._config = _complete(config)
        type_map = {int(z): int(i) for z, i in self._config[key.TYPE_MAP].items()}
        self._type_map = type_map
        index = torch.full((max(max(type_map), 119) + 1,), -1, dtype=torch.long)
        for z, i in type_map.items():
            index[z] = i
        self.register_buffer("type_index", index, persistent=False)
        self._modal_index: int | None = None
        self.modal = modal
        modal_map = self._config.get(key.MODAL_MAP) if self._config.get(key.USE_MODALITY) \
            else None
        if modal_map:
            if modal not in modal_map:
                raise ConfigError(f"this multi-fidelity SevenNet needs `modal`, one of "
                                  f"{', '.join(modal_map)} (got {modal!r})")
            self._modal_index = int(modal_map[modal])
        elif modal is not None:
            raise ConfigError(f"modal={modal!r} given, but this SevenNet has one fidelity")

    @property
    def cutoff(self) -> float:
        return float(self._config[_keys().CUTOFF])

    @property
    def n_interactions(self) -> int:
        return int(self._config[_keys().NUM_CONVOLUTION])

    def supported_elements(self) -> list[str]:
        return [chemical_symbols[z] for z in sorted(self._type_map)]

    def rescale(self) -> torch.nn.Module:
        """SevenNet's shift/scale module (`model.rescale_atomic_energy`)."""
        return self.model.rescale_atomic_energy

    def species_shift(self) -> dict[str, float]:
        """The per-species energy shift (eV) of the rescale module at this network's
        fidelity: what `load` moves into the Potential's `energy_refs`."""
        module = self.rescale()
        shift = module.shift.detach().double().cpu()
        if shift.dim() == 2:  # modal-wise: [modal, species]
            shift = shift[self._modal_index or 0]
        if shift.numel() == 1:
            return {s: float(shift[0]) for s in self.supported_elements()}
        return {chemical_symbols[z]: float(shift[i]) for z, i in self._type_map.items()}

    def zero_shift(self) -> None:
        """Set the rescale module's shift to zero (it lives in `energy_refs` instead)."""
        with torch.no_grad():
            self.rescale().shift.zero_()

    def config(self) -> dict[str, Any]:
        """SevenNet's model config (JSON-able): the architecture keys, the type (and modal)
        map, the current convolution denominators and scale, a zero shift, and `modal`."""
        key = _keys()
        cfg = {k: v for k, v in self._config.items()
               if k in _model_keys() and k not in _TP_BACKENDS}
        cfg[key.CONV_DENOMINATOR] = [
            float(self.model._modules[f"{t}_convolution"].denominator.detach().reshape(-1)[0])
            for t in range(self.n_interactions)]
        module = self.rescale()
        scale = module.scale.detach().double().cpu()
        shift = torch.zeros_like(module.shift.detach().double().cpu())
        if type(module).__name__ == "Rescale":  # one shift and scale for all species
            cfg[key.SHIFT], cfg[key.SCALE] = 0.0, float(scale.reshape(-1)[0])
        else:
            cfg[key.SHIFT], cfg[key.SCALE] = shift.tolist(), scale.tolist()
        cfg[key.TYPE_MAP] = {str(z): i for z, i in self._type_map.items()}
        if self.modal is not None:
            cfg["modal"] = self.modal
        return jsonable(cfg)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SevenNetNetwork:
        """A SevenNet of the architecture in `config`, weights random, shift zero."""
        cfg = _complete(config)
        network = cls(_build(cfg), cfg, modal=config.get("modal"))
        network.zero_shift()
        return network

    def blocks(self) -> list[tuple[str, list[str]]]:
        """`embedding` (the radial basis of the edges and the linear map of the atom-type
        one-hot to the first node features), per interaction layer k `interaction:k` (its
        self-connection, the two self-interaction linears, the convolution with its radial
        MLP and denominator, the gate), then `readout` (the linears to the scalar energy and
        the per-species scale and the zeroed shift)."""
        out = [("embedding", ["model.edge_embedding.*", "model.onehot_to_feature_x.*",
                              "model.one_hot_modality.*"])]
        out += [(f"interaction:{k}", [f"model.{k}_*"]) for k in range(self.n_interactions)]
        out.append(("readout", [f"model.{name}.*" for name in _READOUT]))
        return out

    def block_aliases(self) -> dict[str, list[str]]:
        return {"interactions": [f"interaction:{k}" for k in range(self.n_interactions)]}

    def forward(self, graph: Graph, positions: Tensor, cell: Tensor) -> Tensor:
        """Per-atom energies [N] (eV, shift excluded), differentiable in positions and cell."""
        if graph.cutoff < self.cutoff - 1e-9:  # neighbours would be missing, silently
            raise DataError(f"the graph was built with cutoff {graph.cutoff:g} Å, below this "
                            f"SevenNet's {self.cutoff:g} Å")
        key = _keys()
        vectors = graph.edge_vectors(positions, cell)
        edge_index = graph.edge_index
        with torch.no_grad():
            keep = torch.linalg.vector_norm(vectors.detach(), dim=-1) <= self.cutoff
        if not bool(keep.all()):
            vectors, edge_index = vectors[keep], edge_index[:, keep]
        species = graph.species
        types = self.type_index.index_select(0, species.clamp(0, len(self.type_index) - 1))
        if types.numel() and bool((types < 0).any()):
            bad = sorted({chemical_symbols[int(z)] for z in species[types < 0].tolist()})
            raise DataError(f"SevenNet knows {len(self._type_map)} elements, not "
                            f"{', '.join(bad)}")
        onehot = torch.nn.functional.one_hot(types, len(self._type_map)).to(vectors.dtype)
        data: dict[str, Tensor] = {
            key.EDGE_VEC: vectors, key.EDGE_IDX: edge_index, key.NODE_FEATURE: onehot,
            key.NODE_ATTR: onehot, key.ATOM_TYPE: types, key.BATCH: graph.batch,
        }
        if self._modal_index is not None:
            n_modal = len(self._config[key.MODAL_MAP])
            modal = torch.full((graph.n_structures,), self._modal_index, dtype=torch.long,
                               device=species.device)
            data[key.MODAL_TYPE] = modal
            data[key.MODAL_ATTR] = torch.nn.functional.one_hot(modal, n_modal).to(
                vectors.dtype)
        for name, module in self.model._modules.items():
            if name in _SKIPPED or name == "one_hot_modality":
                continue
            data = module(data)
        return data[key.ATOMIC_ENERGY].reshape(-1)


def _checkpoint_path(variant: str) -> str:
    import sevenn.util

    name = _SHIPPED[variant][0]
    try:
        return sevenn.util.pretrained_name_to_path(name)
    except Exception as exc:  # sevenn would download a checkpoint it does not ship
        raise ConfigError(f"sevennet:{variant}: the weights are not in the installed sevenn "
                          f"package ({type(exc).__name__}: {exc})") from exc


def load(variant: str = "7net-0") -> Potential:
    """A shipped SevenNet as a congener `Potential` (weights from the sevenn wheel, offline):
    its per-species shift becomes `energy_refs`, the network's shift is zero."""
    import sevenn
    from sevenn.checkpoint import SevenNetCheckpoint

    if variant not in _SHIPPED:
        raise ConfigError(f"unknown SevenNet model {variant!r} (known: {', '.join(VARIANTS)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = SevenNetCheckpoint(_checkpoint_path(variant))
        model = checkpoint.build_model()
        config = checkpoint.config
    network = SevenNetNetwork(model, config, modal=_SHIPPED[variant][1])
    refs = network.species_shift()
    network.zero_shift()
    potential = Potential(network, network.supported_elements())
    potential.set_energy_refs(refs)
    potential.metadata = {"family": "sevennet", "variant": variant,
                          "sevenn_version": sevenn.__version__}
    return potential
