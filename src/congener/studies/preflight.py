"""A study's plan checked against its data before anything is generated or trained.

Sizes larger than the pool, a test set that rounds to nothing per temperature, an element
mapping that does not fit the source or the target: each used to surface only after the
data was generated and the source model trained (hours on the paper preset), or, for an empty
test split, never to let the study finish. `preflight` counts what the data will hold without
generating it (Stillinger-Weber protocols know their sample counts; files and mlearn folders
are read) and refuses an impossible plan in one line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from congener.data.split import stratified_split
from congener.data.structures import elements_of, read_structures
from congener.errors import ConfigError, DataError
from congener.studies.config import StudyConfig

TEST_SEED = 12345  # prepare_data's split seed


@dataclass(frozen=True)
class Outline:
    """What a data specification holds: stratum key (temperature or None) per structure, its
    elements, and the size of the test set that comes with it (None: split from the pool)."""

    keys: list[Hashable]
    elements: list[str]
    n_test: int | None = None


def _outline(spec: str, keys=None) -> Outline:
    kind, _, rest = spec.partition(":")
    if kind == "sw" and rest:
        from congener.data.stillinger_weber import load_sw_params
        from congener.data.sw_protocol import SWProtocol

        element, _, preset = rest.partition(":")
        load_sw_params(element, None)  # an element without shipped parameters: one line
        protocol = SWProtocol.preset(preset or "quick")
        keys = [float(t) for t in protocol.temperatures_K for _ in range(protocol.n_samples)]
        return Outline(keys, [element])
    if kind == "mlearn" and rest:
        from congener.data.mlearn import read_mlearn_splits

        splits = read_mlearn_splits(rest, surfaces=False)
        return Outline(_keys(splits["train"]), elements_of(splits["train"] + splits["test"]),
                       len(splits["test"]))
    if not Path(spec).is_file():
        raise DataError(f"data spec {spec!r} is neither sw:<El>, mlearn:<folder> nor a file")
    structures = read_structures(spec, keys=keys)
    return Outline(_keys(structures), elements_of(structures))


def _keys(structures: Sequence) -> list[Hashable]:
    temps = [a.info.get("temperature") for a in structures]
    stratified = all(t is not None for t in temps)  # as prepare_data decides
    return [float(t) for t in temps] if stratified else [None] * len(structures)


def _pool_after_test(keys: list[Hashable], test_size: int) -> list[Hashable]:
    """The keys left for the pool once prepare_data takes its test set (`test_size` in all,
    spread over the temperatures when stratified); `DataError` when that rounds to nothing."""
    stratified = keys[0] is not None
    def split(size: int):
        return stratified_split(keys, test=size / len(keys) if stratified else size,
                                seed=TEST_SEED)
    parts = split(test_size)
    if not parts.test:
        strata = Counter(keys)
        need = next((m for m in range(test_size, len(keys) + 1) if split(m).test), len(keys))
        lo, hi = min(strata.values()), max(strata.values())
        each = f"{lo}" if lo == hi else f"{lo}-{hi}"
        raise DataError(f"target.test_size {test_size} spread over {len(strata)} temperatures "
                        f"({each} structures each) "
                        f"rounds to no test structure; use test_size >= {need} or give "
                        "target.test")
    return [keys[k] for k in parts.train]


def target_outline(cfg: StudyConfig, study_dir: Path) -> tuple[list[Hashable], list[str]]:
    """(stratum keys of the training pool, target elements), from the study's prepared files
    when they exist, else from the data specification."""
    data = study_dir / "data"
    if (data / "target_pool.extxyz").is_file() and (data / "target_test.extxyz").is_file():
        pool = read_structures(data / "target_pool.extxyz")
        return _keys(pool), elements_of(pool)
    outline = _outline(cfg.target.data, cfg.target.label_keys())
    if cfg.target.test:
        read_structures(cfg.target.test, keys=cfg.target.label_keys())  # readable, now
        return outline.keys, outline.elements
    if outline.n_test is not None:
        return outline.keys, outline.elements
    return _pool_after_test(outline.keys, cfg.target.test_size), outline.elements


def _source_elements(cfg: StudyConfig, study_dir: Path) -> list[str]:
    if cfg.source.model:
        from congener.models.checkpoint import read_checkpoint

        return list(read_checkpoint(cfg.source.model).get("elements", []))
    prepared = study_dir / "data" / "source_train.extxyz"
    if prepared.is_file():
        return elements_of(read_structures(prepared))
    outline = _outline(str(cfg.source.data), cfg.source.label_keys())
    if len(outline.keys) <= cfg.source.val_size:
        raise DataError(f"source data {cfg.source.data} holds {len(outline.keys)} structures: "
                        f"too few for source.val_size {cfg.source.val_size} plus training")
    return outline.elements


def _check_sizes(cfg: StudyConfig, keys: list[Hashable]) -> None:
    n_pool, n_val = len(keys), cfg.target.val_size
    asked = [(max(cfg.sizes), "size")] + ([(cfg.hpo.size, "hpo.size")] if cfg.hpo else [])
    for size, name in asked:
        if size + n_val > n_pool:
            raise DataError(f"the target pool holds {n_pool} structures (after the test set): "
                            f"too few for {name} {size} plus {n_val} for validation")
    if cfg.temperature is not None:
        known = sorted({k for k in keys if k is not None})
        if not known:
            raise DataError("temperature runs need structures with a temperature")
        nearest = min(known, key=lambda t: abs(t - cfg.temperature.temperature_K))
        at_t = sum(k == nearest for k in keys)
        if max(cfg.temperature.sizes) + 1 > at_t:
            raise DataError(f"only {at_t} pool structures at {nearest:.0f} K: too few for "
                            f"temperature size {max(cfg.temperature.sizes)} plus validation")


def _check_mapping(cfg: StudyConfig, source: list[str], target: list[str]) -> None:
    unknown = [e for e in cfg.mapping if e not in source]
    if unknown:
        raise DataError(f"mapping names {', '.join(unknown)}, which the source "
                        f"({', '.join(source)}) does not have")
    mapped = {cfg.mapping.get(e, e) for e in source}
    missing = [e for e in target if e not in mapped]
    if missing:
        raise DataError(f"the target data holds {', '.join(missing)}, which the mapping "
                        f"{cfg.mapping} does not reach from the source's {', '.join(source)}")


def preflight(cfg: StudyConfig, study_dir: str | Path) -> None:
    """Refuse a plan its data cannot carry (see module doc); reads, never writes."""
    study_dir = Path(study_dir)
    keys, target = target_outline(cfg, study_dir)
    _check_sizes(cfg, keys)
    if cfg.uses_source():
        _check_mapping(cfg, _source_elements(cfg, study_dir), target)
    for arm in cfg.arm_list():
        _check_train_settings(cfg, arm)
        if arm.outside_start:
            _check_outside(arm, target)
    if cfg.distill is not None:
        from congener.studies.distill_stage import check_stage

        check_stage(cfg.distill, cfg.arm_names(), cfg.sizes)


def _check_train_settings(cfg: StudyConfig, arm) -> None:
    """The arm's training configuration at every size is valid (recipe, refs, lr)."""
    from congener.studies.run import arm_config, run_config

    for size in cfg.sizes:
        try:
            arm_config(run_config(cfg, size, cfg.seeds[0], None, 0), arm)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"arm {arm.name}: {exc}") from None


def _check_outside(arm, target: list[str]) -> None:
    """A foundation or checkpoint start loads, knows the target's elements and has the blocks
    the arm freezes."""
    from congener.models.registry import load_source
    from congener.training.transfer import select

    potential = load_source(arm.start)
    missing = [e for e in target if e not in potential.elements]
    if missing:
        raise DataError(f"arm {arm.name}: {arm.start} does not know {', '.join(missing)} "
                        "of the target data")
    if arm.freeze:
        try:
            select(potential, arm.freeze)
        except ConfigError as exc:
            raise ConfigError(f"arm {arm.name}: {exc}") from None
