"""`congener analyze phonons | md` through click's CliRunner."""

from __future__ import annotations

import json

import ase.build
import ase.io
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import congener.cli.analysis  # noqa: F401  (registers the `analyze` group)
from congener.cli import cli
from congener.errors import DataError
from congener.models.checkpoint import save_potential
from tests.conftest import small_potential


def test_phonons_against_sw_reference(tmp_path):
    out = tmp_path / "ph"
    res = CliRunner().invoke(cli, ["analyze", "phonons", "sw:Ge", "--reference", "sw:Ge",
                                   "--element", "Ge", "--mesh", "8", "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = np.loadtxt(out / "dos.csv", delimiter=",", skiprows=1)
    assert table.shape[1] == 3 and (out / "dos.png").stat().st_size > 0
    summary = json.loads((out / "phonons.json").read_text())
    assert summary["sw:Ge"]["lattice_A"] == pytest.approx(5.654, abs=2e-3)
    # the distance itself is tested on spectra with known answers (test_analysis_phonons)
    assert set(summary) == {"sw:Ge", "reference sw:Ge"} and "dos_distance" in summary["sw:Ge"]


def test_md_writes_structure_and_stability(tmp_path):
    model = save_potential(tmp_path / "m.pt", small_potential(cutoff=4.0, dtype=torch.float32))
    structure = tmp_path / "si.extxyz"
    ase.io.write(structure, [ase.build.bulk("Si", "diamond", a=5.43, cubic=True)] * 2)
    out = tmp_path / "md"
    previous = torch.get_num_threads()
    res = CliRunner().invoke(cli, [
        "analyze", "md", str(model), "--structure", f"{structure}@1", "--temperature", "300",
        "--timestep", "1", "--steps", "20", "--trajectories", "2", "--sample-every", "5",
        "--min-distance", "1.0", "--threads", "1", "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == previous
    assert "stable: 2/2" in res.output
    stability = json.loads((out / "stability.json").read_text())
    assert stability["total"] == 2 and stability["trajectories"][0]["stable"]
    rdf = np.loadtxt(out / "rdf.csv", delimiter=",", skiprows=1)
    adf = np.loadtxt(out / "adf.csv", delimiter=",", skiprows=1)
    assert rdf.shape[1] == 3 and adf.shape == (180, 3)
    assert (out / "rdf.png").stat().st_size > 0 and (out / "structure.json").is_file()


def test_md_missing_structure(tmp_path):
    res = CliRunner().invoke(cli, ["analyze", "md", "m.pt", "--structure", "nope.xyz",
                                   "--temperature", "300", "--steps", "1", "-o", str(tmp_path)])
    assert isinstance(res.exception, DataError)


@pytest.mark.parametrize(("content", "message"), [("not a structure\n", "cannot read"),
                                                  (None, "has no structure at index 3")])
def test_md_unreadable_structure_is_a_data_error(tmp_path, content, message):
    path = tmp_path / "s.extxyz"
    if content is None:
        ase.io.write(path, ase.build.bulk("Si", "diamond", a=5.43), format="extxyz")
    else:
        path.write_text(content)
    res = CliRunner().invoke(cli, ["analyze", "md", "m.pt", "--structure", f"{path}@3",
                                   "--temperature", "300", "--steps", "1", "-o", str(tmp_path)])
    assert isinstance(res.exception, DataError) and message in str(res.exception)
