"""The bases' closed-form derivatives (`_RadialDerivative`, `AngularDerivative`,
`BesselBasis.derivative`) against finite differences and against the plain formulas, to
second order where force training needs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special

from congener.models.basis import BesselBasis, SphericalBasis, legendre, spherical_jn
from congener.models.triplets import AngularDerivative, AngularState
from tests.conftest import small_potential


@pytest.mark.parametrize("order", [0, 1, 3, 6])
def test_spherical_jn_matches_scipy_including_small_arguments(order):
    x = torch.tensor([1e-4, 0.05, 0.3, 0.49, 0.51, 1.0, 2.9, 3.1, 7.0, 15.0],
                     dtype=torch.float64)
    np.testing.assert_allclose(spherical_jn(order, x).numpy(),
                               special.spherical_jn(order, x.numpy()), rtol=1e-9, atol=1e-15)


def test_bessel_basis_derivative_is_the_distance_derivative():
    rbf = BesselBasis(6, cutoff=4.3, envelope_exponent=5).double()
    with torch.no_grad():
        rbf.freq.mul_(torch.linspace(0.9, 1.2, 6, dtype=torch.float64))
    dist = torch.linspace(0.8, 4.4, 31, dtype=torch.float64).requires_grad_(True)
    want = torch.stack([torch.autograd.grad(rbf(dist)[:, k].sum(), dist)[0] for k in range(6)],
                       1)
    # (near the cutoff the envelope's terms cancel: absolute rounding ~1e-14 of values ~10)
    np.testing.assert_allclose(rbf.derivative(dist).detach().numpy(), want.numpy(),
                               rtol=1e-12, atol=1e-12)
    assert float(want[:, 0].abs().max()) > 0.1 and float(want[-1].abs().max()) == 0.0


def test_radial_basis_values_and_derivatives():
    sbf = SphericalBasis(5, 4, cutoff=4.3, envelope_exponent=5).double()
    dist = torch.linspace(0.8, 4.25, 23, dtype=torch.float64)
    np.testing.assert_allclose(sbf.radial(dist).numpy(), sbf.radial_reference(dist).numpy(),
                               rtol=1e-10, atol=1e-12)
    d = dist.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(sbf.radial, (d,))
    assert torch.autograd.gradgradcheck(sbf.radial, (d,))
    # the closed forms equal autograd through the plain formula, first and second derivative
    weights = torch.randn(23, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    def first(f):
        x = dist.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((f(x) * weights).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x)
        return g.detach(), h
    for got, want in zip(first(sbf.radial), first(sbf.radial_reference), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-10)


def _angular(sbf: SphericalBasis):
    def f(cos: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(cos)
        return AngularDerivative.apply(cos, 0, AngularState(cos, mask, sbf.ynorm, sbf.ynorm_values))
    return f


def test_angular_basis_values_and_derivatives():
    sbf = SphericalBasis(7, 3, cutoff=5.0).double()
    gen = torch.Generator().manual_seed(1)
    cos = (2 * torch.rand(2, 3, 4, dtype=torch.float64, generator=gen) - 1) * 0.99
    out = _angular(sbf)(cos)  # [n, D_in, L, D_out]
    np.testing.assert_allclose(out.permute(0, 1, 3, 2).numpy(), sbf.angular(cos).numpy(),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(legendre(7, cos)[..., 3].numpy(),
                               special.eval_legendre(3, cos.numpy()), rtol=1e-12, atol=1e-14)
    c = cos.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_angular(sbf), (c,))
    assert torch.autograd.gradgradcheck(_angular(sbf), (c,))


def test_energy_references_stay_float64():
    pot = small_potential()
    pot.set_energy_refs({"Si": -5.4234567891234})
    pot.to(torch.float32)
    assert next(pot.parameters()).dtype == torch.float32
    assert pot.energy_refs.dtype == torch.float64
    assert pot.get_energy_refs()["Si"] == -5.4234567891234


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_energy_references_follow_the_device_in_float64():
    pot = small_potential()
    pot.set_energy_refs({"Si": -5.4234567891234})
    pot.to(device="cuda", dtype=torch.float32)
    assert pot.energy_refs.device.type == "cuda" and pot.energy_refs.dtype == torch.float64
    assert pot.get_energy_refs()["Si"] == -5.4234567891234


def test_angular_basis_clamps_rounding_beyond_one_with_zero_derivatives():
    # |cos| > 1 by rounding (collinear triplets): the value of cos = +-1, and no derivative of
    # any order there, while the other entries keep theirs
    ynorm = SphericalBasis(5, 3, cutoff=4.0).ynorm
    cos = torch.tensor([[[1 + 1e-9, 0.3], [0.3, -1 - 1e-9]]], dtype=torch.float64)
    state = AngularState(cos, torch.ones_like(cos), ynorm, ynorm.tolist())
    np.testing.assert_allclose(state.derivative(0)[0, 0, :, 0].numpy(), ynorm.numpy())
    np.testing.assert_allclose(state.derivative(0)[0, 1, :, 1].numpy(),
                               (ynorm * (-1.0) ** torch.arange(5)).numpy())
    for order in (1, 2, 3):
        d = state.derivative(order)[0]
        assert float(d[0, :, 0].abs().max()) == 0.0 and float(d[1, :, 1].abs().max()) == 0.0
        assert float(d[0, :, 1].abs().max()) > 0.1
