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

from congener.runtime import sync_free


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
    """Radial basis u(x) sin(f_n x) with x = d / c, f_n = n pi (learnable) and u the envelope
    (which holds the 1/x), as in DimeNet's published code: the sqrt(2/c) of the paper's
    formula is left to the linear layer that follows. A function of d / c only, which
    `training.scaling` relies on."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope_exponent = envelope_exponent
        self.freq = nn.Parameter(torch.arange(1, num_radial + 1, dtype=torch.float) * math.pi)

    def forward(self, dist: Tensor) -> Tensor:
        """dist [E] (Å) -> [E, num_radial]."""
        x = (dist / self.cutoff).unsqueeze(-1)
        return envelope(x, self.envelope_exponent) * torch.sin(self.freq * x)

    def derivative(self, dist: Tensor) -> Tensor:
        """d/d(dist) of `forward`, [E, num_radial] (closed form; for the explicit forces)."""
        x = dist / self.cutoff
        env = envelope_derivative(x, self.envelope_exponent, 0).unsqueeze(-1)
        denv = envelope_derivative(x, self.envelope_exponent, 1).unsqueeze(-1)
        fx = self.freq * x.unsqueeze(-1)
        return (denv * torch.sin(fx) + env * self.freq * torch.cos(fx)) / self.cutoff


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


def _envelope_terms(exponent: int) -> list[tuple[float, int]]:
    """The envelope as (coefficient, power) monomials, for x < 1."""
    p = exponent + 1
    return [(1.0, -1), (-(p + 1) * (p + 2) / 2, p - 1), (float(p * (p + 2)), p),
            (-p * (p + 1) / 2, p + 1)]


def envelope_derivative(x: Tensor, exponent: int, k: int) -> Tensor:
    """k-th x-derivative of `envelope` (k = 0: the envelope itself), zero for x >= 1."""
    out = torch.zeros_like(x)
    for coef, power in _envelope_terms(exponent):
        c = coef * math.prod(range(power - k + 1, power + 1)) if k else coef
        if c != 0.0:
            out += c * x.pow(power - k)
    return torch.where(x < 1.0, out, torch.zeros_like(x))


def _bessel_series(ys: Tensor, order: Tensor, double_factorial: Tensor) -> tuple[Tensor, Tensor]:
    """j_l(y) and j_l'(y) from their 8-term power series (small y), elementwise: `order` is l
    and `double_factorial` (2l+1)!! for each entry of `ys` (broadcast)."""
    term = ys.pow(order) / double_factorial
    series, dseries = term.clone(), term * order / ys
    for m in range(7):
        term = term * (-0.5 * ys * ys) / ((m + 1) * (2 * order + 2 * m + 3))
        series += term
        dseries += term * (order + 2 * m + 2) / ys
    return series, dseries


class _RadialState:
    """j_l(z_ln x), its y-derivatives and the envelope's x-derivatives for one set of
    distances, in float64 and laid out [L, R, E] (distances last: the per-distance and
    per-function factors broadcast along contiguous rows), computed once and extended on
    demand (any derivative order).

    Values: upward recurrence where y >= max(0.5, l/2), else the 8-term power series (as
    `spherical_jn`); first derivative j_l' = j_{l-1} - (l+1)/y j_l (j_{-1} = cos y / y) or the
    series' derivative; higher ones from the Bessel equation y^2 j'' + 2y j' + (y^2 - l(l+1)) j
    = 0 differentiated m times.
    """

    def __init__(self, basis: SphericalBasis, dist: Tensor) -> None:
        self.basis = basis
        x = dist.detach().to(torch.float64) / basis.cutoff
        self.x = x
        zeros = basis.zeros  # [L, R]
        n_l = zeros.shape[0]
        y = zeros[:, :, None] * x  # [L, R, E]
        self.y = y
        r = y.reciprocal()
        cos = torch.cos(y)
        # Upward recurrence j_{n+1} = (2n+1)/y j_n - j_{n-1}, run on rows l > n only, for the
        # signed k_n = s_n j_n with s = + + - - + + ..., so that each step is one addcmul:
        # k_{n+1} = k_{n-1} + s_{n+1} s_n (2n+1) r k_n.
        sign = basis.sign_list
        k = [torch.sin(y).mul_(r)]  # k_0 = j_0, all rows
        if n_l > 1:
            k.append((k[0] - cos).mul_(r))  # k_1 = j_1, all rows
        for n in range(1, n_l - 1):  # k[n] holds rows n.. (k[0], k[1]: all rows)
            prev = k[n - 1][n + 1:] if n <= 2 else k[n - 1][2:]
            cur = k[n][n + 1:] if n <= 1 else k[n][1:]
            k.append(torch.addcmul(prev, r[n + 1:], cur, value=sign[n + 1] * sign[n] * (2 * n + 1)))
        rows = [k[0][0]] + ([k[1][1]] if n_l > 1 else []) + [k[n][0] for n in range(2, n_l)]
        j = torch.stack(rows).mul_(basis.signs)
        below = [cos[0] * r[0]] + ([k[0][1]] if n_l > 1 else []) + [
            k[1][2] if n == 1 else k[n][1] for n in range(1, n_l - 1)]
        jm1 = torch.stack(below).mul_(basis.signs_below)  # j_{l-1}(y_l)
        jd = torch.addcmul(jm1, r * basis.l_plus_1, j, value=-1.0)
        if sync_free(x):  # no host read: the series everywhere, kept where y is small
            self._series_everywhere(j, jd)
        elif x.numel() and float(x.min()) < basis.series_below:
            flat = (y < basis.thresholds).view(-1).nonzero().squeeze(1)
            ys = y.view(-1).index_select(0, flat)
            row = flat.div(y.shape[1] * y.shape[2], rounding_mode="floor")
            series, dseries = _bessel_series(ys, row.to(y.dtype),
                                             basis.double_factorials.index_select(0, row))
            j.view(-1).scatter_(0, flat, series)
            jd.view(-1).scatter_(0, flat, dseries)
        self.j = [j, jd]  # d^m j_l / dy^m
        self.env: dict[int, Tensor] = {}

    def _series_everywhere(self, j: Tensor, jd: Tensor) -> None:
        """The power-series branch without a host read (accelerators): the series of every
        entry, written into `j` and `jd` where y is below the threshold (eight passes over
        [L, R, E] instead of a gather of the few small entries)."""
        basis, y = self.basis, self.y
        small = y < basis.thresholds
        ys = torch.where(small, y, torch.ones_like(y))  # large y: any finite stand-in
        order = torch.arange(y.shape[0], device=y.device, dtype=y.dtype).view(-1, 1, 1)
        series, dseries = _bessel_series(ys, order, basis.double_factorials.view(-1, 1, 1))
        j.copy_(torch.where(small, series, j))
        jd.copy_(torch.where(small, dseries, jd))

    def j_derivative(self, m: int) -> Tensor:
        while len(self.j) <= m:
            k = len(self.j) - 2  # compute j^(k+2) from the equation differentiated k times
            y, j = self.y, self.j
            ll = self.basis.l_times_l1  # [L, 1, 1]
            acc = (2 * k + 2) * y * j[k + 1] + (k * (k + 1) - ll + y * y) * j[k]
            if k >= 1:
                acc = acc + 2 * k * y * j[k - 1]
            if k >= 2:
                acc = acc + k * (k - 1) * j[k - 2]
            j.append(-acc / (y * y))
        return self.j[m]

    def envelope_derivative(self, k: int) -> Tensor:
        """k-th x-derivative of the envelope: [E]."""
        if k not in self.env:
            self.env[k] = envelope_derivative(self.x, self.basis.envelope_exponent, k)
        return self.env[k]

    def derivative(self, k: int, dtype: torch.dtype) -> Tensor:
        """d^k/dd^k of norm * j_l(z_ln d/c) * envelope(d/c): [L, R, E]."""
        zeros, norm = self.basis.zeros.unsqueeze(2), self.basis.norm.unsqueeze(2)  # [L, R, 1]
        out = self.j_derivative(0) * self.envelope_derivative(k)
        for m in range(1, k + 1):
            factor = math.comb(k, m) * zeros.pow(m)
            out += factor * self.j_derivative(m) * self.envelope_derivative(k - m)
        return out.mul_(norm * self.basis.cutoff ** (-k)).to(dtype)


class _RadialDerivative(torch.autograd.Function):
    """k-th distance derivative of the spherical radial basis [L, R, E], differentiable to any
    order."""

    @staticmethod
    def forward(ctx, dist: Tensor, order: int, state: _RadialState) -> Tensor:
        ctx.order, ctx.state = order, state
        ctx.save_for_backward(dist)
        return state.derivative(order, dist.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (dist,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        nxt = _RadialDerivative.apply(dist, ctx.order + 1, ctx.state)
        return (grad * nxt).sum((0, 1)), None, None


class SphericalBasis(nn.Module):
    """DimeNet's 2D basis: radial part per edge [E, L, R] and angular part per triplet [T, L].

    The full basis a_{ln}(d_kj, angle) = rbf[kj, l, n] * cbf[t, l] is never materialised:
    DimeNet++ projects it linearly, so the projection is applied to the radial factor first.
    The radial part is computed in float64 without autograd; its distance derivatives (any
    order, as forces and force training need) are evaluated in closed form (`_RadialState`).
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
        self.ynorm_values: list[float] = ynorm.tolist()  # host copy: no device read per call
        ls = np.arange(num_spherical)
        # constants of the radial evaluation (not saved in checkpoints)
        thresholds = np.maximum(0.5, ls / 2)
        self.register_buffer("thresholds", torch.tensor(thresholds[:, None, None]),
                             persistent=False)
        # the power series is needed only for distances below this (in units of the cutoff)
        self.series_below = float(np.max(thresholds / zeros[:, 0]))
        signs = np.array([1.0 if (n // 2) % 2 == 0 else -1.0 for n in range(num_spherical + 1)])
        self.sign_list = signs.tolist()  # s_n = + + - - + + ... (the recurrence's signs)
        self.register_buffer("signs", torch.tensor(signs[:num_spherical, None, None]),
                             persistent=False)
        below = np.concatenate([[1.0], signs[:num_spherical - 1]])
        self.register_buffer("signs_below", torch.tensor(below[:, None, None]), persistent=False)
        self.register_buffer("l_plus_1", torch.tensor(ls[:, None, None] + 1.0), persistent=False)
        self.register_buffer("double_factorials", torch.tensor(
            [float(np.prod(np.arange(1, 2 * l + 2, 2))) for l in ls]), persistent=False)
        self.register_buffer("l_times_l1", torch.tensor((ls * (ls + 1.0))[:, None, None]),
                             persistent=False)

    def radial(self, dist: Tensor) -> Tensor:
        """dist [E] (Å) -> normalised j_l(z_ln d/c) * envelope, [E, L, R] (computed in float64)."""
        return self.radial_table(dist).permute(2, 0, 1)

    def radial_table(self, dist: Tensor, state: _RadialState | None = None) -> Tensor:
        """`radial` laid out [L, R, E] (contiguous); `state` from `radial_state(dist)`."""
        return _RadialDerivative.apply(dist, 0, state or _RadialState(self, dist))

    def radial_state(self, dist: Tensor) -> _RadialState:
        """The radial factor's values and distance derivatives at `dist`:
        `.derivative(k, dtype)` -> [L, R, E]."""
        return _RadialState(self, dist)

    def radial_reference(self, dist: Tensor) -> Tensor:
        """`radial` written with plain autograd ops (slow; a test oracle)."""
        x = (dist.to(torch.float64) / self.cutoff).unsqueeze(-1)  # [E,1]
        env = envelope(x, self.envelope_exponent).unsqueeze(-1)  # [E,1,1]
        parts = [spherical_jn(l, self.zeros[l] * x) for l in range(self.num_spherical)]
        rbf = torch.stack(parts, dim=1) * self.norm * env  # [E,L,R]
        return rbf.to(dist.dtype)

    def angular(self, cos_angle: Tensor) -> Tensor:
        """cos(angle) [T] -> Y_l^0 [T, L]."""
        return legendre(self.num_spherical, cos_angle) * self.ynorm.to(cos_angle.dtype)
