"""Stability of MD runs: per-trajectory records and stable/total tables per (mode, size).

A study runs MD with several models (training mode such as scratch or transfer, training-set
size) and asks how many trajectories stayed stable. `stability_records` turns one
`MDResult` into records tagged with the model's mode and size; `stability_table` counts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from congener.simulation.md import MDResult


@dataclass(frozen=True)
class StabilityRecord:
    """Fate of one trajectory of one model. failed_step is None for a stable trajectory;
    time_ps is the simulated time until the failure or the end of the run (ps)."""

    mode: str
    size: int
    trajectory: int
    stable: bool
    failed_step: int | None
    reason: str | None
    time_ps: float


@dataclass(frozen=True)
class StabilityRow:
    """Stable and total trajectories of one (mode, size)."""

    mode: str
    size: int
    stable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.stable / self.total if self.total else float("nan")

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Wilson score interval of the stable fraction (scipy's binomtest): honest for the
        small counts of a study (4 stable of 4 is not a certainty)."""
        return wilson_interval(self.stable, self.total, confidence)


def wilson_interval(stable: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for `stable` successes of `total`."""
    if total <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(stable), int(total)).proportion_ci(confidence_level=confidence,
                                                          method="wilson")
    return float(ci.low), float(ci.high)


def stability_records(result: MDResult, *, mode: str = "", size: int = 0
                      ) -> list[StabilityRecord]:
    """One record per trajectory of `result`, tagged with the model's `mode` and `size`."""
    out = []
    for t in result.trajectories:
        steps = result.steps if t.failed_step is None else t.failed_step
        out.append(StabilityRecord(
            mode=str(mode), size=int(size), trajectory=t.index, stable=t.stable,
            failed_step=t.failed_step, reason=None if t.failure is None else str(t.failure),
            time_ps=steps * result.timestep_fs / 1000.0))
    return out


def stability_table(records: Iterable[StabilityRecord]) -> list[StabilityRow]:
    """Stable/total counts per (mode, size), sorted by mode then size."""
    counts: dict[tuple[str, int], list[int]] = {}
    for r in records:
        entry = counts.setdefault((r.mode, r.size), [0, 0])
        entry[0] += int(r.stable)
        entry[1] += 1
    return [StabilityRow(mode=m, size=s, stable=c[0], total=c[1])
            for (m, s), c in sorted(counts.items())]


def format_stability_table(rows: Iterable[StabilityRow]) -> str:
    """A markdown table: mode | size | stable | total | fraction | 95 % interval (Wilson)."""
    lines = ["| mode | size | stable | total | fraction | 95 % interval (Wilson) |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r.mode} | {r.size} | {r.stable} | {r.total} | {r.fraction:.2f} | "
              f"{r.interval()[0]:.2f}-{r.interval()[1]:.2f} |" for r in rows]
    return "\n".join(lines)


def stability_summary(result: MDResult) -> dict[str, Any]:
    """JSON-ready summary of a run: settings, the stability criterion (what stopped a
    trajectory; see `congener.simulation.md.criterion`), timing, counts and each trajectory's
    fate."""
    return {
        "steps": result.steps,
        "timestep_fs": result.timestep_fs,
        "temperature_K": result.temperature_K,
        "friction_per_ps": result.friction_per_ps,
        "criterion": dict(result.criterion),
        "wall_s": round(result.wall_s, 3),
        "system_steps_per_s": round(result.system_steps_per_s, 3),
        "stable": result.n_stable,
        "total": len(result.trajectories),
        "trajectories": [
            {**{k: v for k, v in asdict(r).items() if k not in ("mode", "size")},
             "seed": t.seed, "detail": t.detail}
            for r, t in zip(stability_records(result), result.trajectories, strict=True)
        ],
    }
