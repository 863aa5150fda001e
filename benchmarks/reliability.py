"""Reliability table: the bad-input and fault cases the test suite covers, by class, and the
time from `congener study` start to the first error for misconfigured studies.

    .venv/bin/python benchmarks/reliability.py [--no-timing] [--markdown]

The cases are the tests marked `@pytest.mark.reliability(kind, sees)` (each parameter of a
parametrized test counts as a case); they are run, not only listed, so a failing case shows as
such. The timing starts each misconfigured study as a user would (a fresh `congener` process,
built-in Stillinger-Weber data that would take minutes to generate) and reports the wall time
until it exits with its one-line error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"silent": "silent wrong result", "mess": "fault that leaves a mess",
         "traceback": "traceback instead of one error line", "late": "checked too late"}

MISCONFIGURED = {
    "test set rounds to nothing (sw:Ge, test_size 4)":
        "target: {data: 'sw:Ge', test_size: 4}\n",
    "size larger than the pool": "sizes: [1, 10, 500]\n",
    "mapping to an unknown element": "mapping: {Si: Xx}\n",
    "modes: []": "modes: []\n",
    "budget.updates: -5": "budget: {updates: -5}\n",
    "sizes: 'abc'": "sizes: abc\n",
}


class Collector:
    """pytest plugin: the reliability marker of each test and its outcome."""

    def __init__(self) -> None:
        self.cases: dict[str, tuple[str, str]] = {}
        self.outcome: dict[str, str] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            mark = item.get_closest_marker("reliability")
            if mark is not None:
                self.cases[item.nodeid] = (mark.args[0], mark.args[1])

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.outcome[report.nodeid] = report.outcome


def table(collector: Collector) -> str:
    by_kind: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for nodeid, (kind, sees) in collector.cases.items():
        by_kind[kind].append((nodeid, sees, collector.outcome.get(nodeid, "not run")))
    lines = ["| class | cases | passed | what the user sees (one per test) |",
             "|---|---|---|---|"]
    for kind, label in KINDS.items():
        rows = by_kind.get(kind, [])
        seen = list(dict.fromkeys(sees for _, sees, _ in rows))
        passed = sum(outcome == "passed" for _, _, outcome in rows)
        lines.append(f"| {label} | {len(rows)} | {passed} | {'; '.join(seen)} |")
    total = sum(len(v) for v in by_kind.values())
    passed = sum(o == "passed" for o in collector.outcome.values())
    lines.append(f"| **all** | **{total}** | **{passed}** | |")
    failed = [n for n, o in collector.outcome.items() if o != "passed"]
    if failed:
        lines.append("\nnot passing: " + ", ".join(failed))
    return "\n".join(lines)


def time_to_error(text: str) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "study.yaml"
        cfg.write_text(text)
        start = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).with_name("congener")), "study",
                               str(cfg), "-o", str(Path(tmp) / "s")],
                              capture_output=True, text=True, cwd=tmp, timeout=600)
        seconds = time.perf_counter() - start
        err = (proc.stderr.strip().splitlines() or [""])[-1]
        return seconds, proc.returncode, err


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    collector = Collector()
    os.chdir(ROOT)
    code = pytest.main(["-q", "-m", "reliability", "-p", "no:cacheprovider", "tests"],
                       plugins=[collector])
    print("\n## Bad-input and fault cases covered by the tests\n")
    print(table(collector))
    if not args.no_timing:
        print("\n## Time from `congener study` start to its error (fresh process)\n")
        print("| misconfiguration | seconds | exit | error line |\n|---|---|---|---|")
        for name, text in MISCONFIGURED.items():
            seconds, rc, err = time_to_error(text)
            print(f"| {name} | {seconds:.2f} | {rc} | {err[:110]} |")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
