"""Study results: a flat table, learning-curve and temperature plots, and `report.md`."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from congener.studies.config import RunSpec, StudyConfig
from congener.studies.ranking import ranking_section

COLUMNS = ("name", "kind", "mode", "size", "seed", "lr", "epochs", "updates", "stopped",
           "seconds", "energy_mae", "energy_rmse", "force_mae", "force_rmse", "val_force_mae")


def rows(results: Sequence[tuple[RunSpec, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One flat row per run (test errors in meV/atom and eV/Å)."""
    out = []
    for spec, res in results:
        t = res["test"]
        out.append({"name": spec.name, "kind": spec.kind, "mode": str(spec.mode),
                    "size": spec.size, "seed": spec.seed,
                    "lr": spec.lr if spec.lr is not None else res.get("run", {}).get("lr"),
                    "epochs": res["epochs"], "updates": res.get("updates"),
                    "stopped": res.get("stopped"),
                    "seconds": round(res["seconds"], 1), "energy_mae": t["energy_mae"],
                    "energy_rmse": t["energy_rmse"], "force_mae": t["force_mae"],
                    "force_rmse": t["force_rmse"],
                    "val_force_mae": res["val"].get("val_force_mae")})
    return sorted(out, key=lambda r: (r["kind"], r["mode"], r["size"], r["seed"]))


def write_csv(path: Path, table: Sequence[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(table)
    return path


def summary(table: Sequence[dict[str, Any]], kind: str = "curve"
            ) -> dict[tuple[str, int], dict[str, tuple[float, float, int]]]:
    """(mode, size) -> metric -> (mean, sample std over seeds (ddof 1), number of seeds)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in table:
        if r["kind"] == kind:
            groups[(r["mode"], r["size"])].append(r)
    return {key: {m: _mean_std([r[m] for r in rs]) for m in ("energy_mae", "force_mae",
                                                             "seconds")}
            for key, rs in sorted(groups.items())}


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def improvement(stats: dict, metric: str, base: str = "scratch", other: str = "transfer"
                ) -> dict[int, float]:
    """Relative reduction (%) of the mean `metric` of `other` against `base`, per size."""
    sizes = sorted({s for (_, s) in stats})
    return {s: 100 * (1 - stats[(other, s)][metric][0] / stats[(base, s)][metric][0])
            for s in sizes if (base, s) in stats and (other, s) in stats}


def paired_improvement(table: Sequence[dict[str, Any]], metric: str, base: str = "scratch",
                       other: str = "transfer", kind: str = "curve"
                       ) -> dict[int, tuple[float, float, int, int]]:
    """Per size, over seeds run in both modes (same training set per seed): the relative
    reduction (%) of `metric` by `other`, as (mean, sample std, seeds where `other` wins,
    seeds)."""
    by = {(r["mode"], r["size"], r["seed"]): r[metric] for r in table if r["kind"] == kind}
    out = {}
    for size in sorted({s for (_, s, _) in by}):
        pairs = [(by[(base, size, k)], by[(other, size, k)]) for (m, s, k) in by
                 if m == base and s == size and (other, size, k) in by]
        if pairs:
            gains = [100 * (1 - o / b) for b, o in pairs]
            mean, std, n = _mean_std(gains)
            out[size] = (mean, std, sum(o < b for b, o in pairs), n)
    return out


def plot_learning_curves(stats: dict, path: Path) -> Path:
    """Energy and force MAE against training-set size, mean ± std over seeds, log-log."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in zip(axes, ("energy_mae", "force_mae"),
                                 ("energy MAE (meV/atom)", "force MAE (eV/Å)"), strict=True):
        for mode in sorted({m for (m, _) in stats}):
            sizes = sorted(s for (m, s) in stats if m == mode)
            mean = np.array([stats[(mode, s)][metric][0] for s in sizes])
            std = np.array([stats[(mode, s)][metric][1] for s in sizes])
            ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=mode)
        ax.set(xscale="log", yscale="log", xlabel="training structures", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_temperature(results: Sequence[tuple[RunSpec, dict[str, Any]]], path: Path) -> Path:
    """Box plots of per-structure force MAE per test temperature, per mode and size."""
    plt = _pyplot()
    runs = [(s, r) for s, r in results if s.kind == "temperature"]
    keys = sorted({(str(s.mode), s.size) for s, _ in runs}, key=lambda k: (k[1], k[0]))
    temps = sorted({t for _, r in runs for t in r["temperatures"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(temps) * len(keys) / 2), 4))
    width = 0.8 / max(len(keys), 1)
    for k, key in enumerate(keys):
        data = []
        for t in temps:
            vals = [v for s, r in runs if (str(s.mode), s.size) == key
                    for v, tt in zip(r["per_structure_force_mae"], r["temperatures"],
                                     strict=True) if tt == t]
            data.append(vals or [np.nan])
        pos = np.arange(len(temps)) + (k - (len(keys) - 1) / 2) * width
        box = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True,
                         showfliers=False)
        color = plt.get_cmap("tab10")(k)
        for patch in box["boxes"]:
            patch.set_facecolor(color)
        ax.plot([], [], color=color, lw=6, label=f"{key[0]}, {key[1]} samples")
    ax.set_xticks(np.arange(len(temps)), [f"{t:.0f}" for t in temps])
    ax.set(xlabel="test temperature (K)", ylabel="force MAE per structure (eV/Å)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(stats: dict, table: Sequence[dict[str, Any]] = (), kind: str = "curve"
                   ) -> str:
    """Mean ± std per (size, mode); with the run `table`, the per-seed (paired) reduction of
    the errors by each other mode against scratch."""
    modes = sorted({m for (m, _) in stats})
    sizes = sorted({s for (_, s) in stats})
    head = "| size | " + " | ".join(f"{m} E (meV/atom) | {m} F (eV/Å)" for m in modes)
    lines = [head + " |", "|---" * (1 + 2 * len(modes)) + "|"]
    for s in sizes:
        cells = []
        for m in modes:
            if (m, s) in stats:
                e, f = stats[(m, s)]["energy_mae"], stats[(m, s)]["force_mae"]
                cells += [f"{e[0]:.1f} ± {e[1]:.1f}", f"{f[0]:.3f} ± {f[1]:.3f}"]
            else:
                cells += ["", ""]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    others = [m for m in modes if m != "scratch"] if "scratch" in modes else []
    for other in others:
        de = improvement(stats, "energy_mae", other=other)
        df = improvement(stats, "force_mae", other=other)
        pe = paired_improvement(table, "energy_mae", other=other, kind=kind)
        pf = paired_improvement(table, "force_mae", other=other, kind=kind)
        lines += ["", f"Reduction of the error by {other} against scratch: of the means, and "
                  f"per seed (same training set in both modes) as mean ± std with the seeds "
                  f"{other} wins.", "",
                  "| size | energy: of means | energy: per seed | force: of means | "
                  "force: per seed |", "|---|---|---|---|---|"]
        for s in sorted(de):
            cells = [f"{de[s]:+.0f} %", _paired(pe.get(s)), f"{df[s]:+.0f} %", _paired(pf.get(s))]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scales_section(results: Sequence[tuple[RunSpec, dict[str, Any]]]) -> list[str]:
    """Markdown lines: the corresponding-states scales of each `scaled` run (none: [])."""
    runs = [(spec, res["scales"]) for spec, res in results if res.get("scales")]
    if not runs:
        return []
    lines = ["## Corresponding-states scales (`scaled` runs)", "",
             "Fitted per run to its training forces before training: target distances x length, "
             "energies x energy (the cutoff becomes the source's / length); force MAE on the "
             "training structures before training, unscaled -> scaled; the same on the "
             "validation structures, which decide whether the scaled start is kept.", "",
             "| run | length | energy | force MAE, training (eV/Å) | force MAE, validation "
             "(eV/Å) | start used |", "|---|---|---|---|---|---|"]
    for spec, sc in sorted(runs, key=lambda r: r[0].name):
        after = sc.get("val_force_mae_after")
        checked = isinstance(after, float) and math.isfinite(after)  # older runs: not checked
        val = f"{sc['val_force_mae_before']:.4f} -> {after:.4f}" if checked else ""
        used = "scaled" if sc.get("accepted", True) else "unscaled"
        lines.append(f"| {spec.name} | {sc['length']:.4f} | {sc['energy']:.4f} | "
                     f"{sc['force_mae_before']:.4f} -> {sc['force_mae_after']:.4f} | {val} | "
                     f"{used} |")
    return [*lines, ""]


def arms_section(cfg: StudyConfig) -> list[str]:
    """Markdown lines: how each arm starts (only for studies that declare arms)."""
    if not cfg.arms:
        return []
    lines = ["## Arms", "", "| arm | start | zero-shot | frozen | soft-freeze | refs | train "
             "overrides |", "|---|---|---|---|---|---|---|"]
    for a in cfg.arms:
        lines.append(f"| {a.name} | `{a.start}` | {'yes' if a.zero_shot else ''} | "
                     f"{', '.join(a.freeze or ())} | {a.soft_freeze if a.soft_freeze else ''} | "
                     f"{a.refs or cfg.train.refs} | "
                     f"{', '.join(f'{k}={v}' for k, v in a.train.items())} |")
    return [*lines, ""]


def _paired(value: tuple[float, float, int, int] | None) -> str:
    if value is None:
        return ""
    mean, std, wins, n = value
    return f"{mean:+.0f} ± {std:.0f} % ({wins}/{n})"


def write_report(cfg: StudyConfig, study_dir: Path,
                 results: Sequence[tuple[RunSpec, dict[str, Any]]],
                 source: dict[str, Any] | None = None, extra: str = "",
                 failed: dict[str, str] | None = None,
                 speeds: dict[str, dict[str, float]] | None = None,
                 selection: Sequence[str] = ()) -> Path:
    """results.csv, learning_curves.png, temperature.png and report.md in `study_dir`."""
    table = rows(results)
    write_csv(study_dir / "results.csv", table)
    stats = summary(table)
    parts = [f"# congener study: {cfg.name}", "",
             f"Target data `{cfg.target.data}`, source `{cfg.source.model or cfg.source.data}`,"
             f" mapping {cfg.mapping}; sizes {list(cfg.sizes)}, seeds {list(cfg.seeds)}, "
             f"arms {cfg.arm_names()}; DimeNet++ cutoff {cfg.model.cutoff} Å; "
             f"losses: {'force matching' if cfg.train.force_only else 'energy + force'}.", ""]
    if source:
        v = source.get("val", {})
        parts += [f"Source model: validation energy MAE {v.get('val_energy_mae', float('nan')):.1f}"
                  f" meV/atom, force MAE {v.get('val_force_mae', float('nan')):.3f} eV/Å "
                  f"({source.get('n_train')} structures, {source.get('seconds', 0):.0f} s).", ""]
    parts += list(selection)
    if stats:
        plot_learning_curves(stats, study_dir / "learning_curves.png")
        parts += ["## Learning curve (test set, mean ± std over seeds)", "",
                  markdown_table(stats, table), "", "![learning curves](learning_curves.png)", ""]
    parts += ranking_section(cfg, results, speeds or {})
    parts += arms_section(cfg)
    parts += scales_section(results)
    if any(s.kind == "temperature" for s, _ in results):
        plot_temperature(results, study_dir / "temperature.png")
        t_stats = summary(table, "temperature")
        parts += ["## Temperature transferability", "",
                  f"Trained on samples at one temperature ({cfg.temperature.temperature_K:.0f} K "
                  "or the nearest available), tested at all temperatures.", "",
                  markdown_table(t_stats, table, "temperature"), "",
                  "![temperature](temperature.png)", ""]
    if extra:
        parts += [extra, ""]
    if failed:
        parts += ["## Failed runs", "", "Not in the tables above; run the study again to retry "
                  "them (each folder's `failed.json` holds the error).", ""]
        parts += [f"- `{name}`: {error}" for name, error in sorted(failed.items())] + [""]
    parts += ["All runs: `results.csv`; each run's folder under `runs/` holds its config, "
              "checkpoints and metrics."]
    path = study_dir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
