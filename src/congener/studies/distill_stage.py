"""The study's distillation stage: students of chosen arms' models (`training.distill`).

    distill:
      arms: [sevennet-ft]        # teachers: the model of each arm at `size` ...
      size: 10                   # ... whose run has the lowest validation loss over the seeds
      students:                  # name -> model/train overrides of the distillation defaults
        default: {}
        small: {model: {hidden: 32, num_blocks: 2}}
      sampling: {md_steps: 300}  # training.distill.SamplingConfig
      report: {md_batch: 8}      # analysis.distillation.ReportConfig
      dft_weight: 1.0            # the teacher run's own DFT training structures, mixed in
      mix_dft: true

The teacher is chosen on validation (never on the test set); its seeds are the structures its
run trained on, and the study's test set is the DFT test of the report. Each arm distils into
`distill/<arm>/` (resumable like every stage); the report gains one section per arm with the
accuracy against speed-up table of its students.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from congener.bounds import check_float, check_int
from congener.errors import ConfigError

if TYPE_CHECKING:  # studies.config holds DistillStage as its `distill` section
    from congener.studies.config import RunSpec

Log = Callable[[str], None]


@dataclass(frozen=True)
class DistillStage:
    """Which arms' models teach, at which size, and the students they teach (see module)."""

    arms: tuple[str, ...] = ()
    size: int = 10
    students: dict[str, Any] = field(default_factory=lambda: {"default": {}})
    sampling: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    dft_weight: float = 1.0
    mix_dft: bool = True

    def __post_init__(self) -> None:
        arms = self.arms if isinstance(self.arms, tuple | list) else (self.arms,)
        if not arms or not all(isinstance(a, str) and a for a in arms):
            raise ConfigError("distill.arms must list the arms whose models teach, e.g. "
                              f"[sevennet-ft] (got {self.arms!r})")
        object.__setattr__(self, "arms", tuple(arms))
        check_int("distill.size", self.size, 1)
        check_float("distill.dft_weight", self.dft_weight, 0.0)
        if not isinstance(self.students, dict) or not self.students:
            raise ConfigError("distill.students must map student names to {model, train} "
                              f"overrides, e.g. {{default: {{}}}} (got {self.students!r})")
        for name, spec in self.students.items():
            self.config(name)  # each student's settings are valid
            if not isinstance(spec, dict | None):
                raise ConfigError(f"distill.students.{name} must be a mapping")

    def config(self, student: str):
        """The `DistillConfig` of one student (sampling and the student's model/train)."""
        from congener.training.distill import DistillConfig

        spec = dict(self.students[student] or {})
        unknown = set(spec) - {"model", "train"}
        if unknown:
            raise ConfigError(f"distill.students.{student}: unknown key "
                              f"{sorted(unknown)[0]!r} (known: model, train)")
        return DistillConfig.from_dict({"sampling": self.sampling, **spec,
                                        "dft_weight": self.dft_weight})

    def report_config(self):
        from congener.analysis.distillation import ReportConfig
        from congener.training.config import from_dict

        return from_dict(ReportConfig, self.report, "distill.report")


def check_stage(stage: DistillStage, arm_names: Sequence[str], sizes: Sequence[int]) -> None:
    """The stage's arms and size exist in the study (before anything runs)."""
    unknown = [a for a in stage.arms if a not in arm_names]
    if unknown:
        raise ConfigError(f"distill.arms: the study has no arm {unknown[0]!r} (arms: "
                          f"{', '.join(arm_names)})")
    if stage.size not in sizes:
        raise ConfigError(f"distill.size {stage.size} is not one of the study's sizes "
                          f"({', '.join(map(str, sizes))})")
    stage.report_config()


def teacher_run(arm: str, size: int, results: Sequence[tuple[RunSpec, dict[str, Any]]]
                ) -> RunSpec | None:
    """Of the arm's finished runs at `size`, the one with the lowest validation loss."""
    def val_loss(res: dict[str, Any]) -> float:
        value = (res.get("val") or {}).get("val_loss", math.inf)
        return value if isinstance(value, int | float) and math.isfinite(value) else math.inf

    runs = [(val_loss(res), spec.seed, spec) for spec, res in results
            if spec.kind == "curve" and spec.mode == arm and spec.size == size]
    return min(runs, key=lambda r: (r[0], r[1]))[2] if runs else None


def distill_stage(stage: DistillStage, study_dir: Path,
                  results: Sequence[tuple[RunSpec, dict[str, Any]]], log: Log | None = None,
                  cached_only: bool = False) -> str:
    """Distil every arm's chosen model into each student, report them; the report section."""
    from congener.analysis.distillation import format_tradeoff, report_student
    from congener.data.structures import read_structures
    from congener.models.checkpoint import load_potential
    from congener.training.distill import distill

    say = log or (lambda _m: None)
    sections = []
    for arm in stage.arms:
        spec = teacher_run(arm, stage.size, results)
        folder = study_dir / "distill" / arm
        if spec is None:
            sections.append(f"- {arm}: no finished run at size {stage.size}, nothing distilled")
            continue
        if not cached_only:
            pool = read_structures(study_dir / "data" / "target_pool.extxyz")
            seeds = [pool[k] for k in spec.train_idx]
            test = read_structures(study_dir / "data" / "target_test.extxyz")
            teacher_path = study_dir / "runs" / spec.name / "model.pt"
            teacher = load_potential(teacher_path)
            for name in stage.students:
                say(f"distill {arm} ({spec.name}) -> student {name}")
                result = distill(teacher, seeds, folder, stage.config(name),
                                 teacher_name=str(teacher_path), student_name=name,
                                 dft=seeds if stage.mix_dft else None,
                                 progress=lambda s, d, t: say(f"  {s}: {d}/{t}")
                                 if d in (0, t) else None)
                report_student(result, teacher, teacher_name=str(teacher_path), seeds=seeds,
                               dft_test=test, cfg=stage.report_config(),
                               progress=lambda s: say(f"  report: {s}"))
        if (folder / "report.md").is_file():
            table = format_tradeoff(folder, teacher=f"{arm} ({spec.name})")
            sections.append(table.replace("# Students of", "### Students of", 1)
                            + f"\nFolder: `{folder.relative_to(study_dir)}` "
                            "(each student's report.md has the phonon and liquid figures).\n")
    if not sections:
        return ""
    return ("## Distillation\n\nTeacher: per arm, the run at size "
            f"{stage.size} with the lowest validation loss; seeds: its training structures; "
            "students validated on held-out teacher labels; DFT errors on the study's test "
            "set.\n\n" + "\n".join(sections))
