"""CLI command: `congener distill` (a fast student trained on a teacher's labels)."""

from __future__ import annotations

from pathlib import Path

import click

from congener.cli import cli, label_key_options
from congener.errors import ConfigError


@cli.command("distill")
@click.argument("teacher")
@click.option("--structures", "seed_file", required=True,
              help="Seed structures (extxyz, .db): MD, rattled and strained copies start here.")
@click.option("-o", "--output", "folder", required=True,
              help="Result folder (samples, labels, student, report); rerun to resume.")
@click.option("--config", "config_file", default=None,
              help="YAML/TOML with sections sampling, model, train, report and the keys "
                   "val_fraction, test_fraction, dft_weight, label_batch, label_chunk.")
@click.option("--student", "student_file", default=None,
              help="YAML/TOML whose `model` and `train` sections define the student "
                   "(e.g. a smaller DimeNet++); overrides --config's.")
@click.option("--dft", "dft_file", default=None,
              help="DFT-labelled structures mixed into the student's training set.")
@click.option("--dft-weight", type=float, default=None,
              help="Loss weight of each --dft structure relative to a teacher label [1].")
@click.option("--dft-test", "dft_test_file", default=None,
              help="DFT test structures: the report gives teacher and student errors on them.")
@click.option("--name", "student_name", default=None,
              help="Student name: its folder under OUTPUT/students [the --student file's "
                   "name, else 'student']. Students of one folder share the teacher labels.")
@click.option("--no-report", is_flag=True, help="Stop after training the student.")
@click.option("--threads", type=int, default=None, help="Torch threads [all cores].")
@label_key_options
def distill_command(teacher, seed_file, folder, config_file, student_file, dft_file,
                    dft_weight, dft_test_file, student_name, no_report, threads, keys=None):
    """Distil TEACHER (a congener checkpoint or a foundation model such as sevennet:7net-0)
    into a fast student: sample with the teacher (MD over a temperature ladder, rattled and
    strained copies), label, train, and compare the two (accuracy, speed, phonons, liquid
    structure)."""

    from tqdm import tqdm

    from congener.analysis.distillation import ReportConfig
    from congener.data.structures import read_structures
    from congener.models.registry import load_source
    from congener.runtime import set_threads
    from congener.training.config import from_dict, read_mapping
    from congener.training.distill import DistillConfig, distill

    raw = read_mapping(config_file) if config_file else {}
    report_cfg = from_dict(ReportConfig, raw.pop("report", None), "report")
    if student_file:
        student = read_mapping(student_file)
        unknown = set(student) - {"model", "train"}
        if unknown:
            raise ConfigError(f"--student {student_file}: unknown section "
                              f"{sorted(unknown)[0]!r} (known: model, train)")
        raw.update(student)
    if dft_weight is not None:
        raw["dft_weight"] = dft_weight
    if threads is not None:
        raw["threads"] = threads
    cfg = DistillConfig.from_dict(raw)
    if dft_weight is not None and not dft_file:
        raise ConfigError("--dft-weight weights the --dft structures; give --dft too")
    seeds = read_structures(seed_file, labelled=False)  # geometries: labels optional
    dft = read_structures(dft_file, keys=keys) if dft_file else None
    dft_test = read_structures(dft_test_file, keys=keys) if dft_test_file else None
    set_threads(cfg.threads or None)
    potential = load_source(teacher)

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, dynamic_ncols=True)
        bar.n = done
        bar.refresh()

    md_bar: list[tqdm] = []

    def md_step(step: int, state) -> None:  # the steps of one temperature's MD
        if not md_bar or step < md_bar[0].n:
            for old in md_bar:
                old.close()
            md_bar[:] = [tqdm(total=cfg.sampling.md_steps, desc="  MD steps", leave=False,
                              dynamic_ncols=True)]
        if step % 5 == 0 or step == cfg.sampling.md_steps:
            md_bar[0].n = step
            md_bar[0].refresh()

    name = student_name or (Path(student_file).stem if student_file else "student")
    result = distill(potential, seeds, folder, cfg, teacher_name=teacher, dft=dft,
                     student_name=name, progress=progress, md_callback=md_step)
    for bar in [*bars.values(), *md_bar]:
        bar.close()
    c = result.counts
    click.echo(f"{c['snapshots']} snapshots ({c['md_frames']} MD, {c['rattled']} rattled, "
               f"{c['strained']} strained; {c['duplicates_removed']} duplicates removed; "
               f"{c['md_failed_trajectories']} of {c['md_trajectories']} MD trajectories "
               f"unstable), {c['labelled']} labelled: {result.labels}")
    click.echo(f"student: {result.student}")
    if not no_report:
        _report(result, potential, teacher, dft_test, report_cfg, seeds)


def _report(result, teacher, teacher_name, dft_test, report_cfg, seeds) -> None:
    from congener.analysis.distillation import report_student

    text = report_student(result, teacher, teacher_name=teacher_name, seeds=seeds,
                          dft_test=dft_test, cfg=report_cfg,
                          progress=lambda stage: click.echo(f"report: {stage}", err=True))
    click.echo(text)
    click.echo((Path(result.folder) / "report.md").read_text())
