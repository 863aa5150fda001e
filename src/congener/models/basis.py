"""DimeNet++ basis functions (Gasteiger et al. 2020): radial Bessel and spherical 2D bases.

Written by hand because no maintained library offers them without pulling in a framework
(torch_geometric's version needs sympy-generated code and is tied to its own graph object).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize, special
from torch import Tensor, nn


def envelope(x: Tensor, exponent: int = 5) -> Tensor:
    """Polynomial envelope u(x) of DimeNet (smooth cutoff, u(1)=u'(1)=u''(1)=0), times 1/x.

    x = d / cutoff. Zero for x >= 1.
    """
    p = exponent + 1
    a = -(p + 1) * (p + 2) / 2
    b = p * (p + 2)
    c = -p * (p + 1) / 2
    xp = x.pow(p - 1)
    value = 1.0 / x + a * xp + b * xp * x + c * xp * x * x
    return torch.where(x < 1.0, value, torch.zeros_like(x))


class BesselBasis(nn.Module):
    """Radial basis sqrt(2/c) sin(n pi d / c) / d with the envelope; frequencies learnable."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope_exponent = envelope_exponent
        self.freq = nn.Parameter(torch.arange(1, num_radial + 1, dtype=torch.float) * math.pi)

    def forward(self, dist: Tensor) -> Tensor:
        """dist [E] (Å) -> [E, num_radial]."""
        x = (dist / self.cutoff).unsqueeze(-1)
        return envelope(x, self.envelope_exponent) * torch.sin(self.freq * x)


def spherical_bessel_zeros(num_spherical: int, num_radial: int) -> np.ndarray:
    """First `num_radial` positive zeros z_ln of j_l for l < num_spherical, [L, R]."""
    zeros = np.zeros((num_spherical, num_radial))
    zeros[0] = np.arange(1, num_radial + 1) * np.pi
    # Zeros of j_l interlace those of j_{l-1}: bracket each root between consecutive ones.
    points = np.arange(1, num_radial + num_spherical) * np.pi
    for order in range(1, num_spherical):
        count = num_radial + num_spherical - order - 1
        roots = [optimize.brentq(lambda r, o=order: special.spherical_jn(o, r), points[k],
                                 points[k + 1]) for k in range(count)]
        points = np.array(roots)
        zeros[order] = points[:num_radial]
    return zeros


def spherical_jn(order: int, x: Tensor) -> Tensor:
    """Spherical Bessel function j_l(x) for x > 0, stable for small x (float64 advised).

    Upward recurrence loses accuracy for x < l, so below x = max(0.5, l/2) an 8-term power
    series is used instead (its truncation error there is below 1e-12).
    """
    threshold = max(0.5, order / 2)
    small = x < threshold
    xs = torch.where(small, x, torch.zeros_like(x))  # safe inputs for each branch
    xl = torch.where(small, torch.full_like(x, threshold), x)
    j_prev, j = torch.sin(xl) / xl, torch.sin(xl) / xl**2 - torch.cos(xl) / xl
    if order == 0:
        rec = j_prev
    else:
        for n in range(1, order):
            j_prev, j = j, (2 * n + 1) / xl * j - j_prev
        rec = j
    term = xs.pow(order) / float(np.prod(np.arange(1, 2 * order + 2, 2)))
    series = term
    for m in range(7):
        term = term * (-0.5 * xs * xs) / ((m + 1) * (2 * order + 2 * m + 3))
        series = series + term
    return torch.where(small, series, rec)


def legendre(num: int, c: Tensor) -> Tensor:
    """Legendre polynomials P_l(c) for l < num, stacked on the last axis: [..., num]."""
    out = [torch.ones_like(c), c]
    for n in range(1, num - 1):
        out.append(((2 * n + 1) * c * out[n] - n * out[n - 1]) / (n + 1))
    return torch.stack(out[:num], dim=-1)


class SphericalBasis(nn.Module):
    """DimeNet's 2D basis: radial part per edge [E, L, R] and angular part per triplet [T, L].

    The full basis a_{ln}(d_kj, angle) = rbf[kj, l, n] * cbf[t, l] is never materialised:
    DimeNet++ projects it linearly, so the projection is applied to the radial factor first.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float,
                 envelope_exponent: int = 5) -> None:
        super().__init__()
        self.num_spherical, self.num_radial = num_spherical, num_radial
        self.cutoff = float(cutoff)
        self.envelope_exponent = envelope_exponent
        zeros = spherical_bessel_zeros(num_spherical, num_radial)
        norm = np.array([[1.0 / math.sqrt(0.5 * special.spherical_jn(l + 1, z) ** 2)
                          for z in zeros[l]] for l in range(num_spherical)])
        ynorm = np.sqrt((2 * np.arange(num_spherical) + 1) / (4 * math.pi))
        self.register_buffer("zeros", torch.tensor(zeros, dtype=torch.float64))
        self.register_buffer("norm", torch.tensor(norm, dtype=torch.float64))
        self.register_buffer("ynorm", torch.tensor(ynorm, dtype=torch.float64))

    def radial(self, dist: Tensor) -> Tensor:
        """dist [E] (Å) -> normalised j_l(z_ln d/c) * envelope, [E, L, R] (computed in float64)."""
        x = (dist.to(torch.float64) / self.cutoff).unsqueeze(-1)  # [E,1]
        env = envelope(x, self.envelope_exponent).unsqueeze(-1)  # [E,1,1]
        parts = [spherical_jn(l, self.zeros[l] * x) for l in range(self.num_spherical)]
        rbf = torch.stack(parts, dim=1) * self.norm * env  # [E,L,R]
        return rbf.to(dist.dtype)

    def angular(self, cos_angle: Tensor) -> Tensor:
        """cos(angle) [T] -> Y_l^0 [T, L]."""
        return legendre(self.num_spherical, cos_angle) * self.ynorm.to(cos_angle.dtype)
