"""CLI commands: `congener train`, `congener transfer`, `congener evaluate`."""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import click

from congener.cli import cli, label_key_options
from congener.errors import ConfigError
from congener.files import output_file, output_folder, write_json


def _train_options(fn=None, *, required: bool = True):
    if fn is None:
        return lambda f: _train_options(f, required=required)
    options = [
        click.option("--train", "train_file", required=required,
                     help="Training structures (extxyz)."),
        click.option("--val", "val_file", default=None,
                     help="Validation structures [default: --val-fraction of --train]."),
        click.option("--val-fraction", type=float, default=0.1, show_default=True),
        click.option("--test", "test_file", default=None, help="Evaluated after training."),
        click.option("--config", "config_file", default=None,
                     help="YAML/TOML with sections `model` and `train`; options override it."),
        click.option("--epochs", type=int, default=None),
        click.option("--batch-size", type=int, default=None),
        click.option("--lr", type=float, default=None, help="Initial learning rate."),
        click.option("--lr-final", type=float, default=None, help="Learning rate at the end."),
        click.option("--energy-weight", type=float, default=None,
                     help="Weight of the per-atom energy term (0 = force matching only)."),
        click.option("--stress-weight", type=float, default=None),
        click.option("--loss", type=click.Choice(["mse", "huber"]), default=None,
                     help="Squared errors (the paper) or Huber [default: mse]."),
        click.option("--huber-delta", type=float, default=None,
                     help="Huber threshold in eV/atom, eV/Å and GPa [default: 0.01]."),
        click.option("--ema-decay", type=float, default=None,
                     help="Keep a moving average of the weights, e.g. 0.99 [default: 0 = off]."),
        click.option("--warmup-steps", type=int, default=None,
                     help="Ramp the learning rate up over the first N updates (for a second "
                          "stage or a fine-tuning) [default: 0 = off]."),
        click.option("--patience", type=int, default=None,
                     help="Stop at the first validation this many epochs or more after the "
                          "best one [default: never]."),
        click.option("--seed", type=int, default=None),
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ..."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None),
        click.option("--refs", type=click.Choice(["refit", "train", "keep"]), default=None,
                     help="Per-element reference energies: refit by least squares on the "
                          "training data before and after training, train them with the "
                          "weights, or keep the starting model's [default: refit]."),
        click.option("-o", "--output", "run_dir", required=required,
                     help="Run folder (checkpoints, history, model.pt); rerun to resume."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _configs(config_file, overrides, cutoff=None, *, fixed_model: str | None = None):
    """(model, train) configurations from the file and options. `fixed_model` (a reason):
    the architecture comes from an existing model, so a model section or --cutoff is refused."""
    from congener.models.dimenet import DimeNetConfig
    from congener.training.config import TrainConfig, from_dict, read_mapping

    raw = read_mapping(config_file) if config_file else {}
    unknown = set(raw) - {"model", "train"}
    if unknown:
        raise ConfigError(f"unknown config section {sorted(unknown)[0]!r} (known: model, train)")
    if fixed_model and (raw.get("model") or cutoff is not None):
        raise ConfigError(f"{fixed_model}; drop --cutoff and the config's model section")
    model = from_dict(DimeNetConfig, raw.get("model"), "model")
    if cutoff is not None:
        model = replace(model, cutoff=cutoff)
    train = TrainConfig.from_dict(raw.get("train") or {})
    return model, replace(train, **{k: v for k, v in overrides.items() if v is not None})


def _load_sets(train_file, val_file, val_fraction, seed, keys=None):
    from congener.data.split import random_split
    from congener.data.structures import read_structures

    train = read_structures(train_file, keys=keys)
    if val_file:
        return train, read_structures(val_file, keys=keys)
    if not 0 < val_fraction < 1 or len(train) < 2:
        raise ConfigError("give --val, or --val-fraction in (0, 1) with >= 2 training structures")
    split = random_split(len(train), val=max(1, round(val_fraction * len(train))), seed=seed)
    return [train[k] for k in split.train], [train[k] for k in split.val]


def _run(potential, train, val, model_cfg, cfg, run_dir, test_file, lr_scales=None, meta=None,
         keys=None, stages_file=None):
    from tqdm import tqdm

    from congener.training.data import LabelledSet
    from congener.training.trainer import fit

    output_folder(run_dir, "-o")
    cutoff = potential.cutoff
    tset, vset = LabelledSet(train, cutoff, name="training set"), LabelledSet(val, cutoff,
                                                                              name="validation set")
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone reports
    if stages_file:
        return _run_stages(potential, tset, vset, cfg, run_dir, test_file, meta, keys,
                           stages_file)
    with tqdm(total=cfg.epochs, unit="epoch", dynamic_ncols=True, disable=not main) as bar:
        def progress(row):
            bar.n = row["epoch"] + 1
            bar.set_postfix(loss=f"{row['train_loss']:.3g}", val_E=f"{row['val_energy_mae']:.1f}",
                            val_F=f"{row['val_force_mae']:.3f}")
            bar.refresh()
        result = fit(potential, tset, vset, cfg, run_dir=run_dir, lr_scales=lr_scales,
                     metadata=meta, callback=progress)
    if not main:
        return
    click.echo(f"best epoch {result.best_epoch}: validation energy MAE "
               f"{result.best_val.get('val_energy_mae', float('nan')):.2f} meV/atom, force MAE "
               f"{result.best_val.get('val_force_mae', float('nan')):.4f} eV/Å; "
               f"{result.seconds:.0f} s")
    click.echo(f"model: {Path(run_dir) / 'model.pt'}")
    _test(potential, run_dir, test_file, keys)


def _run_stages(potential, tset, vset, cfg, run_dir, test_file, meta, keys, stages_file):
    """`train --stages`: the chain of `training.stages`, its stopping stage chosen on
    validation, the test set (if any) read once, after the choice."""
    from congener.training.stages import read_stages, train_stages

    stages, metric, patience = read_stages(stages_file, cfg)

    def on_stage(k, row):
        click.echo(f"stage {k}: {row['epochs']} epochs, validation energy MAE "
                   f"{row['val_energy_mae']:.2f} meV/atom, force MAE "
                   f"{row['val_force_mae']:.4f} eV/Å")

    result = train_stages(potential, tset, vset, stages, run_dir, metric=metric,
                          patience=patience, metadata=meta, on_stage=on_stage)
    click.echo(f"chosen on validation ({metric}): stage {result.chosen} of "
               f"{len(result.stages)} run (stopped by {result.stopped_by}); "
               f"model: {Path(run_dir) / 'model.pt'}")
    _test(potential, run_dir, test_file, keys)


def _test(potential, run_dir, test_file, keys):
    from congener.analysis.errors import evaluate, metrics
    from congener.data.structures import read_structures

    if test_file:
        m = metrics(evaluate(potential, read_structures(test_file, keys=keys)))
        write_json(Path(run_dir) / "test_metrics.json", m)
        click.echo(f"test: energy MAE {m['energy_mae']:.2f} meV/atom, force MAE "
                   f"{m['force_mae']:.4f} eV/Å ({m['n']} structures"
                   + (f"; {m['n_nonfinite']} with non-finite predictions left out: "
                      "`congener evaluate` lists them" if m.get("n_nonfinite") else "") + ")")


_OVERRIDES = ("epochs", "batch_size", "lr", "lr_final", "energy_weight", "stress_weight", "loss",
              "huber_delta", "ema_decay", "warmup_steps", "patience", "seed", "device", "dtype",
              "refs")


@cli.command("train")
@label_key_options
@_train_options
@click.option("--cutoff", type=float, default=None, help="Cutoff in Å [default: 5.0].")
@click.option("--init", "init_model", default=None,
              help="Continue from this model instead of random weights (e.g. a second stage "
                   "with --energy-weight after force matching).")
@click.option("--stages", "stages_file", default=None,
              help="YAML/TOML with a list of stages (train settings over the options above), "
                   "repeat_last, metric, patience: trained in turn, the stopping stage chosen "
                   "on validation (training.stages).")
def train_command(train_file, val_file, val_fraction, test_file, config_file, run_dir,
                  cutoff, init_model, stages_file=None, keys=None, **overrides):
    """Train a DimeNet++ potential from scratch (force matching unless --energy-weight > 0)."""
    import torch

    from congener.data.structures import elements_of, file_hash_of
    from congener.models.checkpoint import build_potential, load_potential

    model_cfg, cfg = _configs(config_file, {k: overrides[k] for k in _OVERRIDES}, cutoff,
                              fixed_model=init_model and "--init keeps the model's architecture "
                                                         "and cutoff")
    train, val = _load_sets(train_file, val_file, val_fraction, cfg.seed, keys)
    torch.manual_seed(cfg.seed)  # the initial weights follow --seed: the same seed, same model
    if init_model:
        potential = load_potential(init_model)
        missing = sorted(set(elements_of(train)) - set(potential.elements))
        if missing:
            raise ConfigError(f"{init_model} knows {potential.elements}, not {missing}; use "
                              "`congener transfer --map` to start a new element")
    else:
        potential = build_potential(elements_of(train), model_cfg)  # what it is trained on
    meta = {"mode": "scratch" if not init_model else "continued",
            "init_model": init_model, "train_data": file_hash_of(train_file)}
    _run(potential, train, val, model_cfg, cfg, run_dir, test_file, meta=meta, keys=keys,
         stages_file=stages_file)


@cli.command("transfer")
@click.argument("source_model")
@click.option("--map", "mapping", multiple=True,
              help="SOURCE=TARGET element mapping, e.g. Si=Ge (repeatable; congener DimeNet++ "
                   "sources: foundation models know the target element already).")
@click.option("--fresh-embedding", is_flag=True,
              help="Start the target embedding row fresh instead of from the source row.")
@click.option("--freeze", "freeze_parts", default=None,
              help="Comma-separated parts to freeze: first:N or last:N blocks, block names "
                   "or aliases (see --list-blocks), or patterns over block or parameter names.")
@click.option("--list-blocks", is_flag=True,
              help="Print the source model's blocks with their parameter counts and exit.")
@click.option("--soft-freeze", type=float, default=None,
              help="Instead of freezing, scale the learning rate of --freeze parts by this.")
@click.option("--scale", "scale", default="none", show_default=True,
              help="Corresponding-states start: 'auto' fits a length and an energy scale to "
                   "the training forces (target distances x S, energies x MU), 'S,MU' sets "
                   "them, 'none' starts from the source as it is.")
@label_key_options
@_train_options(required=False)
def transfer_command(source_model, mapping, fresh_embedding, freeze_parts, list_blocks,
                     soft_freeze, scale, train_file, val_file, val_fraction, test_file,
                     config_file, run_dir, keys=None, **overrides):
    """Fine-tune SOURCE_MODEL on target data (all parameters by default). SOURCE_MODEL is a
    congener checkpoint or a foundation model: chgnet:0.3.0, chgnet:0.2.0, chgnet:r2scan,
    sevennet:7net-0, ..."""
    from congener.data.structures import elements_of, file_hash_of
    from congener.models.registry import load_source
    from congener.training import scaling, transfer

    if list_blocks:
        _list_blocks(load_source(source_model))
        return
    for value, option in ((train_file, "--train"), (run_dir, "-o/--output")):
        if not value:
            raise ConfigError(f"missing option {option}")

    pairs: dict[str, str] = {}
    for item in mapping:
        src, sep, dst = (x.strip() for x in item.partition("="))
        if not sep or not src or not dst:
            raise ConfigError(f"--map takes SOURCE=TARGET, e.g. Si=Ge (got {item!r})")
        if src in pairs:
            raise ConfigError(f"--map maps {src} twice ({src}={pairs[src]} and {item}); give "
                              "each source element once")
        if dst in pairs.values():
            raise ConfigError(f"--map maps two source elements to {dst}; one model row per "
                              "target element")
        pairs[src] = dst
    if soft_freeze is not None and not freeze_parts:
        raise ConfigError("--soft-freeze scales the parts named by --freeze; give --freeze too")
    _, cfg = _configs(config_file, {k: overrides[k] for k in _OVERRIDES},
                      fixed_model="a transfer keeps the source model's architecture")
    source = load_source(source_model)
    if scale != "none" and source.network.family != "dimenet++":
        raise ConfigError("--scale (corresponding states) rescales DimeNet++ models only")
    train, val = _load_sets(train_file, val_file, val_fraction, cfg.seed, keys)
    potential = transfer.start_from(source, pairs, elements_of(train),
                                    fresh_embedding=fresh_embedding, seed=cfg.seed)
    meta = {"mode": "transfer", "source_model": str(source_model), "mapping": pairs,
            "train_data": file_hash_of(train_file)}
    if scale != "none":
        stored = Path(run_dir) / "scales.json"
        resumed = scale == "auto" and (Path(run_dir) / "last.pt").is_file()
        found = (scaling.stored_scales(stored) if resumed else None) \
            or _scales(potential, train, scale)  # a resumed run keeps its first fit
        if scale == "auto" and not resumed:  # a fitted choice is checked on validation
            found = scaling.check_on_validation(potential, found, val)
        output_folder(run_dir)
        write_json(stored, {"scales": asdict(found)}, strict=False)
        potential = scaling.scale_potential(potential, *found.applied)
        meta["scales"] = asdict(found)
        click.echo(f"corresponding states: {found.describe()}; cutoff {potential.cutoff:.3f} Å")
    scales = None
    if freeze_parts:
        parts = [p.strip() for p in freeze_parts.split(",") if p.strip()]
        if soft_freeze is not None:
            scales = transfer.lr_scales(potential, parts, soft_freeze)
            click.echo(f"soft-frozen (lr x {soft_freeze}): {len(scales)} parameter tensors")
        else:
            names = transfer.freeze(potential, parts)
            click.echo(f"frozen: {len(names)} parameter tensors ({', '.join(parts)})")
    _run(potential, train, val, None, cfg, run_dir, test_file, lr_scales=scales, meta=meta,
         keys=keys)


def _list_blocks(potential) -> None:
    from congener.training.transfer import describe_blocks

    blocks = describe_blocks(potential)
    click.echo(f"{potential.network.family} model, {len(blocks)} blocks in the order data flows "
               "through them (freeze with --freeze first:N, last:N or names):")
    for k, (name, count) in enumerate(blocks):
        click.echo(f"  {k:3d}  {name:<24} {count:>10,d}")
    click.echo(f"  {'':3}  {'total':<24} {sum(c for _, c in blocks):>10,d}")
    aliases = potential.network.block_aliases()
    if aliases:
        click.echo("aliases: " + "; ".join(f"{a} = {', '.join(b)}" for a, b in aliases.items()))


def _scales(potential, train, value: str):
    """--scale: 'auto' (fitted to the training forces) or 'S,MU'."""
    from congener.training.scaling import Scales, fit_scales

    if value == "auto":
        return fit_scales(potential, train)
    try:
        length, energy = (float(x) for x in value.split(","))
    except ValueError:
        raise ConfigError(f"--scale takes auto, none or S,MU, e.g. 0.93,0.8 (got {value!r})") \
            from None
    return Scales(length, energy, float("nan"), float("nan"))


@cli.command("evaluate")
@click.argument("model")
@click.argument("data", nargs=-1, required=True)
@click.option("--by", type=click.Choice(["group", "temperature", "none"]), default="group",
              show_default=True, help="Break errors down by this key.")
@click.option("--plot", default=None, help="Write energy/force parity plots to this PNG.")
@click.option("--json", "json_out", default=None,
              help="Write the metrics to this JSON file (strict JSON: null for a metric "
                   "without data; `nonfinite_structures` lists structures left out).")
@label_key_options
def evaluate_command(model, data, by, plot, json_out, keys=None):
    """Energy, force and stress errors of MODEL on DATA files.

    Structures whose predictions are not finite (e.g. overlapping atoms) are named in a
    warning and left out of the means; if no structure is finite, that is an error."""

    import numpy as np

    from congener.analysis.errors import breakdown, evaluate, metrics, parity_plot
    from congener.data.structures import read_structures, shortest_distance
    from congener.errors import DataError
    from congener.models.registry import load_source

    potential = load_source(model, dtype=__import__("torch").float64)
    structures, origins = [], []  # origins: (file, index in the file) of each structure
    for f in data:
        read = read_structures(f, keys=keys)
        structures += read
        origins += [(f, k) for k in range(len(read))]
    ev = evaluate(potential, structures)
    bad = np.flatnonzero(~ev.finite).tolist()
    if bad:
        listed = "; ".join(f"{origins[k][0]} structure {origins[k][1]} (shortest distance "
                           f"{shortest_distance(structures[k]):.3g} Å)" for k in bad[:20])
        listed += f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
        what = (f"{len(bad)} of {len(structures)} structures have non-finite predicted "
                f"energies or forces")
        if len(bad) == len(structures):
            raise DataError(f"all {what}, no metric can be computed: {listed}")
        click.echo(f"warning: {what}, left out of the means: {listed}", err=True)
    rows = {"all": metrics(ev)} | ({} if by == "none" else breakdown(ev, by))
    out_col = f" {'left out':>8}" if bad else ""
    click.echo(f"{by if by != 'none' else '':>14} {'n':>5} {'E MAE':>9} {'E RMSE':>9} "
               f"{'E bias':>9} {'F MAE':>8} {'F RMSE':>8} {'S MAE':>7}{out_col}")
    click.echo(f"{'':>14} {'':>5} {'meV/at':>9} {'meV/at':>9} {'meV/at':>9} {'eV/Å':>8} "
               f"{'eV/Å':>8} {'GPa':>7}{' ' * len(out_col)}")
    for key, m in rows.items():
        click.echo(f"{key:>14} {m['n']:5d} {m['energy_mae']:9.2f} {m['energy_rmse']:9.2f} "
                   f"{m['energy_bias']:+9.2f} {m['force_mae']:8.4f} {m['force_rmse']:8.4f} "
                   f"{m['stress_mae']:7.3f}" + (f" {m['n_nonfinite']:8d}" if bad else ""))
    if bad:
        click.echo(f"left out of the means: {len(bad)} structure(s) with non-finite "
                   "predictions (listed in the warning)")
    if plot:
        click.echo(f"parity plot: {parity_plot(ev, plot, title=Path(model).name)}")
    if json_out:
        result = dict(rows)
        if bad:
            result["nonfinite_structures"] = [{"file": str(origins[k][0]),
                                               "index": origins[k][1]} for k in bad]
        write_json(output_file(json_out, "--json"), result)  # strict: null for NaN and inf
