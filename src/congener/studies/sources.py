"""Data specifications of a study: `sw:<El>[:preset]`, `mlearn:<folder>` or a structure file."""

from __future__ import annotations

from pathlib import Path

from ase import Atoms

from congener.data.formats import LabelKeys
from congener.data.structures import read_structures
from congener.errors import DataError


def load_spec(spec: str, workdir: Path, workers: int = 1, keys: LabelKeys | None = None
              ) -> tuple[list[Atoms], list[Atoms] | None]:
    """Structures named by `spec`: (training pool, test set or None when the spec has none).

    `sw:Ge` generates quick-preset Stillinger-Weber data (resumable in `workdir`);
    `sw:Ge:paper` the paper's protocol; `mlearn:<folder>` reads training.json and test.json
    (surfaces excluded, as in the paper); anything else is read as a structure file.
    """
    kind, _, rest = spec.partition(":")
    if kind == "sw" and rest:
        from congener.data.generate import generate_sw_data
        from congener.data.sw_protocol import SWProtocol

        element, _, preset = rest.partition(":")
        protocol = SWProtocol.preset(preset or "quick")
        return generate_sw_data(element, protocol, workdir=workdir, workers=workers), None
    if kind == "mlearn" and rest:
        from congener.data.mlearn import read_mlearn_splits

        splits = read_mlearn_splits(rest, surfaces=False)
        return splits["train"], splits["test"]
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"data spec {spec!r} is neither sw:<El>, mlearn:<folder> nor a file")
    return read_structures(path, keys=keys), None
