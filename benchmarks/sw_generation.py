"""Benchmark of Stillinger-Weber MD data generation through LAMMPS.

Measures (1) raw LAMMPS throughput for 64-atom SW NVT in one process, (2) the throughput of
congener's protocol (NPT + sampled NVT, extraction included) at low, middle and high
temperature, (3) the wall time of `SWProtocol.quick()` for Si and Ge together with
`--workers` processes, and projects the time of `SWProtocol.paper()`. Prints a markdown table.

    .venv/bin/python benchmarks/sw_generation.py [--workers 2] [--steps 40000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from congener.data.generate import generate_sw_data, run_sw_md
from congener.data.lammps_runtime import open_lammps, run_commands
from congener.data.lammps_sw import sw_setup_commands
from congener.data.stillinger_weber import load_sw_params, shipped_params_path
from congener.data.sw_protocol import SWProtocol

ELEMENTS = ("Si", "Ge")


def raw_nvt_steps_per_s(element: str, temperature_K: float, steps: int) -> float:
    """LAMMPS alone: 64 atoms, fix nvt, 1 fs, no output, one process."""
    a0 = load_sw_params(element).diamond_lattice_constant
    lmp = open_lammps()
    try:
        run_commands(lmp, [
            "units metal", "atom_style atomic", "boundary p p p",
            f"lattice diamond {a0}", "region box block 0 2 0 2 0 2", "create_box 1 box",
            "create_atoms 1 box", *sw_setup_commands(shipped_params_path(element), element),
            "timestep 0.001", f"velocity all create {temperature_K} 1 mom yes rot no",
            f"fix md all nvt temp {temperature_K} {temperature_K} 0.1", "thermo 0",
            "run 1000",
        ])
        start = time.perf_counter()
        run_commands(lmp, [f"run {steps}"])
        return steps / (time.perf_counter() - start)
    finally:
        lmp.close()


def protocol_steps_per_s(element: str, temperature_K: float, steps: int) -> float:
    """congener's protocol at paper settings (sample every 1000 steps), shortened."""
    protocol = SWProtocol.paper().with_overrides(
        temperatures_K=(temperature_K,), npt_steps=steps // 2, nvt_steps=steps // 2)
    start = time.perf_counter()
    run_sw_md(element, protocol, temperature_K)
    return protocol.steps_per_temperature / (time.perf_counter() - start)


def quick_wall_s(workers: int) -> float:
    """Wall time of the quick preset for Si and Ge, in fresh work folders."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for element in ELEMENTS:
            generate_sw_data(element, SWProtocol.quick(), workdir=Path(tmp) / element,
                             workers=workers)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40_000)
    args = parser.parse_args()
    rows = []
    for element in ELEMENTS:
        raw = raw_nvt_steps_per_s(element, 1000.0, args.steps)
        rows.append((f"LAMMPS SW NVT {element}, 64 atoms, 1000 K, 1 process",
                     f"{raw:,.0f} steps/s"))
    rates = []
    for element in ELEMENTS:
        for t in (300.0, 1800.0, 3600.0):
            rate = protocol_steps_per_s(element, t, args.steps)
            rates.append(rate)
            rows.append((f"congener protocol {element} {t:g} K, 1 process",
                         f"{rate:,.0f} steps/s"))
    mean_rate = sum(rates) / len(rates)
    quick = SWProtocol.quick()
    wall = quick_wall_s(args.workers)
    rows.append((f"quick preset, Si + Ge ({2 * len(quick.temperatures_K)} runs x "
                 f"{quick.steps_per_temperature:,} steps), {args.workers} workers",
                 f"{wall:.1f} s wall"))
    paper = SWProtocol.paper()
    total_steps = len(ELEMENTS) * len(paper.temperatures_K) * paper.steps_per_temperature
    projected_h = total_steps / (mean_rate * args.workers) / 3600
    rows.append((f"paper preset, Si + Ge ({total_steps:,} steps), projected at "
                 f"{mean_rate:,.0f} steps/s x {args.workers} workers", f"{projected_h:.1f} h"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"SW generation benchmark ({platform.processor() or platform.machine()}, "
          f"{cpus} CPUs available, Python {platform.python_version()})\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
