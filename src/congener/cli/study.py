"""CLI command: `congener study [CONFIG]` — the learning-curve study."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click

from congener.cli import cli, parse_list
from congener.studies.executors import Engine


@cli.command("study")
@click.argument("config", required=False)
@click.option("-o", "--output", "study_dir", default="congener-study", show_default=True,
              help="Study folder; run the same command again to resume.")
@click.option("--workers", type=int, default=None, help="Parallel training processes.")
@click.option("--sizes", default=None, help="Override training sizes, e.g. 1,10,50.")
@click.option("--seeds", default=None, help="Override seeds, e.g. 0,1,2,3,4.")
@click.option("--executor", type=click.Choice([str(e) for e in Engine]), default=None,
              help="Where runs execute (overrides the config's executor.kind).")
@click.option("--report-only", is_flag=True,
              help="Write the report from the runs finished so far; train nothing.")
def study_command(config: str | None, study_dir: str, workers: int | None, sizes: str | None,
                  seeds: str | None, executor: str | None, report_only: bool) -> None:
    """Learning-curve study: transfer against scratch over training sizes and seeds.

    Without CONFIG, runs the built-in demonstration: Stillinger-Weber Si and Ge data
    (LAMMPS, quick preset), a Si source model, and the Ge learning curve.
    """
    from tqdm import tqdm

    from congener.studies.config import load_study_config
    from congener.studies.learning_curve import run_study
    from congener.studies.report import markdown_table, rows, summary

    cfg = load_study_config(config)
    overrides = {"workers": workers, "sizes": parse_list(sizes, int, "--sizes"),
                 "seeds": parse_list(seeds, int, "--seeds")}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if executor is not None:
        cfg = replace(cfg, executor=replace(cfg.executor, kind=Engine(executor)))
    if report_only:
        from congener.studies.learning_curve import report_only as write_partial

        path, count = write_partial(cfg, Path(study_dir))
        click.echo(f"report of {count} finished runs: {path}")
        return
    start = time.perf_counter()
    bar = None
    results = []

    def log(msg: str) -> None:
        click.echo(f"[{time.perf_counter() - start:6.0f} s] {msg}")

    def on_start(phase: str, total: int) -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
        bar = tqdm(total=total, unit="run", dynamic_ncols=True, desc=phase)

    def on_done(spec, res) -> None:  # run_study calls on_start before a phase's runs
        results.append((spec, res))
        bar.update(1)
        where, m = ("test", res["test"]) if "test" in res else ("val", {  # search: validation
            k.removeprefix("val_"): v for k, v in (res.get("val") or {}).items()})
        bar.set_postfix_str(f"{spec.name}: {where} E {m.get('energy_mae', float('nan')):.1f} "
                            f"meV/atom, F {m.get('force_mae', float('nan')):.3f} eV/Å")

    try:
        report = run_study(cfg, Path(study_dir), log=log, on_done=on_done, on_start=on_start)
    finally:  # also when runs failed: the error line must not land on the bar
        if bar is not None:
            bar.close()
    click.echo("\nTest errors, mean ± std over seeds:\n")
    table = rows([(spec, res) for spec, res in results if "test" in res])
    click.echo(markdown_table(summary(table), table))
    click.echo(f"\nreport: {report}\nplots: {Path(study_dir) / 'learning_curves.png'}"
               f"  (finished in {time.perf_counter() - start:.0f} s)")
