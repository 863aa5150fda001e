"""Model families and source names: what a checkpoint's `model` field or a source such as
`chgnet:0.3.0` resolves to.

- `network_class(family)`: the `Network` subclass of a family (DimeNet++, CHGNet, SevenNet);
  foundation families are imported only when used, so congener runs without their packages.
- `load_source(spec)`: a congener checkpoint path, or a foundation model by name
  (`chgnet:0.3.0`, `chgnet:0.2.0`, `chgnet:r2scan`, `sevennet:7net-0`, ...), whose weights
  ship inside its package and load with no network access.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from congener.errors import ConfigError
from congener.models.family import Network
from congener.models.potential import Potential

# family -> "module:class"
FAMILIES = {
    "dimenet++": "congener.models.dimenet:DimeNetPP",
    "chgnet": "congener.models.foundation.chgnet:CHGNetNetwork",
    "sevennet": "congener.models.foundation.sevennet:SevenNetNetwork",
}
# foundation name prefix -> (module with `VARIANTS` and `load(variant) -> Potential`, package)
FOUNDATIONS = {
    "chgnet": ("congener.models.foundation.chgnet", "chgnet"),
    "sevennet": ("congener.models.foundation.sevennet", "sevenn"),
}


def _import(module: str, package: str | None, what: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if package and exc.name and exc.name.split(".")[0] == package:
            raise ConfigError(f"{what} needs the `{package}` package: pip install {package}") \
                from exc
        raise


def network_class(family: str) -> type[Network]:
    """The `Network` subclass of `family`; `ConfigError` for an unknown one."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    module, _, name = FAMILIES[family].partition(":")
    package = FOUNDATIONS.get(family, (None, None))[1]
    return getattr(_import(module, package, f"a {family} model"), name)


def foundation_names() -> list[str]:
    """Every foundation source name (family:variant), without importing the families."""
    names = []
    for family, (module, _) in FOUNDATIONS.items():
        spec = importlib.util.find_spec(module)
        if spec is None:
            continue
        names += [f"{family}:{v}" for v in _variants(module)]
    return names


def _variants(module: str) -> tuple[str, ...]:
    return tuple(importlib.import_module(module).VARIANTS)


def is_foundation_name(spec: str) -> bool:
    """Whether `spec` names a foundation model (family:variant) rather than a file."""
    family, sep, _ = str(spec).partition(":")
    return bool(sep) and family in FOUNDATIONS and not Path(spec).exists()


def load_source(spec: str | Path, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Potential:
    """A potential from a congener checkpoint path or a foundation name (see module doc)."""
    from congener.models.checkpoint import load_potential

    text = str(spec)
    family, sep, variant = text.partition(":")
    if not sep or Path(text).exists() or len(family) < 2:  # a path (C:\\ is a drive letter)
        return load_potential(text, device=device, dtype=dtype)
    if family not in FOUNDATIONS:
        raise ConfigError(f"unknown foundation model {text!r}: not a file, and {family!r} is not "
                          f"a foundation family (known: {', '.join(FOUNDATIONS)})")
    module_name, package = FOUNDATIONS[family]
    module = _import(module_name, package, text)
    if variant not in module.VARIANTS:
        raise ConfigError(f"unknown {family} model {variant!r} (known: "
                          f"{', '.join(f'{family}:{v}' for v in module.VARIANTS)})")
    potential = module.load(variant)
    potential.metadata = {**getattr(potential, "metadata", {}), "source": text}
    return potential.to(device=device, dtype=dtype).eval()
