"""Checkpoint files: one `.pt` holding everything needed to rebuild a Potential.

Contents: format tag, congener version, model family (`model`: dimenet++, chgnet, sevennet)
and its configuration, elements, energy references, weights and free-form metadata (training
data hash, source run, ...). Any family of `models.registry` loads through `load_potential`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from congener import __version__
from congener.errors import CheckpointError, ConfigError, first_line
from congener.files import atomic_write
from congener.models.dimenet import DimeNetConfig, DimeNetPP
from congener.models.potential import Potential

FORMAT = "congener-potential/1"


def build_potential(elements: list[str], config: DimeNetConfig | None = None) -> Potential:
    """A freshly initialised DimeNet++ potential for `elements`."""
    return Potential(DimeNetPP(config or DimeNetConfig()), elements)


def save_potential(path: str | Path, potential: Potential, metadata: dict[str, Any] | None = None
                   ) -> Path:
    """Write `potential` (weights, config, elements, refs, metadata) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "congener_version": __version__,
        "model": potential.network.family,
        "config": potential.network.config(),
        "elements": list(potential.elements),
        "energy_refs": potential.get_energy_refs(),
        "state_dict": {k: v.detach().cpu() for k, v in potential.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    return save_atomic(payload, path)


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save through a temporary file and a rename: `path` is never left half-written."""
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary; `CheckpointError` for a missing or corrupted file."""
    path = Path(path)
    if path.is_dir():
        found = [n for n in ("model.pt", "best.pt") if (path / n).is_file()]
        hint = f"; use {path / found[0]}" if found else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint{hint}")
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint; it was cut off "
                              "while written or copied")
    if _is_training_state(path):
        raise CheckpointError(f"{path} is a training-state file (for resuming a run), not a "
                              f"potential; use {path.with_name('model.pt')} (the final model) "
                              f"or {path.with_name('best.pt')} (the best epoch so far)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable congener checkpoint "
                              f"({type(exc).__name__}: {first_line(exc, 120)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a congener potential (format {got!r}, "
                              f"expected {FORMAT!r})")
    return payload


def _is_training_state(path: Path) -> bool:
    """Whether `path` is a trainer's `last.pt` (it holds numpy state that a weights-only load
    refuses, so it is recognised from the pickle's bytes without unpickling anything)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pickle = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            data = archive.read(pickle) if pickle else b""
    except (OSError, zipfile.BadZipFile):
        return False
    return all(key in data for key in (b"optimizer", b"identity", b"rng"))


def load_potential(path: str | Path, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> Potential:
    """Rebuild the Potential stored in `path`; clear `CheckpointError` on any mismatch."""
    from congener.models.registry import network_class

    payload = read_checkpoint(path)
    family = payload.get("model", "dimenet++")
    try:
        network = network_class(family).from_config(payload["config"])
        potential = Potential(network, payload["elements"])
        potential.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{path} does not fit congener {__version__}: "
                              f"{first_line(exc)}") from exc
    potential.metadata = dict(payload.get("metadata", {}))
    return potential.to(device=device, dtype=dtype).eval()
