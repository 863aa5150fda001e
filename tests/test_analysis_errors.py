"""Error metrics: MAE, RMSE and the signed energy bias, overall and per group/temperature."""

from __future__ import annotations

import numpy as np

from congener.analysis.errors import Evaluation, breakdown, evaluate, metrics
from congener.data.structures import label
from tests.conftest import rattled_diamond, small_potential


def _evaluation() -> Evaluation:
    """Three structures (2, 1, 1 atoms) with known errors: +2, +4, -3 meV/atom."""
    e_err = np.array([2e-3, 4e-3, -3e-3])
    f_err = np.array([[0.1, 0, 0], [0, -0.3, 0], [0, 0, 0.2], [0.4, 0, 0]])
    zeros = np.zeros(3)
    return Evaluation(energy_error=e_err, force_error=f_err,
                      stress_error=np.full((3, 3, 3), np.nan),
                      atom_structure=np.array([0, 0, 1, 2]),
                      groups=["a", "a", "b"], temperatures=np.array([300.0, 300.0, np.nan]),
                      e_ref=zeros, e_pred=e_err, f_ref=np.zeros((4, 3)), f_pred=f_err)


def test_metrics_and_breakdown_by_hand():
    ev = _evaluation()
    m = metrics(ev)
    assert m["n"] == 3
    assert np.isclose(m["energy_mae"], 3.0) and np.isclose(m["energy_bias"], 1.0)
    assert np.isclose(m["energy_rmse"], np.sqrt((4 + 16 + 9) / 3))
    assert np.isclose(m["force_mae"], 1.0 / 12) and np.isnan(m["stress_mae"])
    groups = breakdown(ev, "group")
    assert list(groups) == ["a", "b"]
    assert np.isclose(groups["a"]["energy_bias"], 3.0)
    assert np.isclose(groups["a"]["energy_mae"], 3.0)
    assert np.isclose(groups["b"]["energy_bias"], -3.0)
    assert np.isclose(groups["a"]["force_mae"], 0.6 / 9)  # atoms of structures 0 and 1
    temps = breakdown(ev, "temperature")
    assert list(temps) == ["300 K", "unknown"] and temps["300 K"]["n"] == 2


def test_energy_bias_is_prediction_minus_reference():
    """Raising the model's per-atom reference energy by 2 meV raises the bias by exactly 2 and
    leaves the forces' errors unchanged."""
    pot = small_potential()
    atoms = [rattled_diamond(seed=k) for k in range(2)]
    data = [label(a.copy(), energy=-4.5 * len(a), forces=np.zeros((len(a), 3))) for a in atoms]
    before = metrics(evaluate(pot, data))
    pot.set_energy_refs({"Si": pot.get_energy_refs()["Si"] + 2e-3})
    after = metrics(evaluate(pot, data))
    assert np.isclose(after["energy_bias"] - before["energy_bias"], 2.0, atol=1e-9)
    assert np.isclose(after["force_mae"], before["force_mae"], rtol=0, atol=1e-12)


def test_stress_error_only_where_the_cell_has_a_volume():
    # a bulk cell and a slab without vacuum (zero third cell vector) in one batch: the bulk's
    # stress error is the model's stress minus the label, the slab's is NaN, not virial / 1e-12
    pot = small_potential()
    bulk, slab = rattled_diamond(seed=1), rattled_diamond(seed=2)
    slab.pbc, slab.cell[2] = (True, True, False), 0.0
    data = [label(a.copy(), energy=-4.5 * len(a), forces=np.zeros((len(a), 3)),
                  stress=np.zeros(6)) for a in (bulk, slab)]
    ev = evaluate(pot, data)
    assert np.isfinite(ev.stress_error[0]).all() and np.abs(ev.stress_error[0]).max() > 1e-4
    assert np.isnan(ev.stress_error[1]).all()
    assert np.isclose(metrics(ev)["stress_mae"], np.abs(ev.stress_error[0]).mean())
