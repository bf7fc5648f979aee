r"""The engine for multistep samplers: a per-mode state vector with mean and covariance recursions.

A multistep sampler's state is `num_slots` points (`gaussdiff_jax._sampler._multistep`). Per mode each slot
holds a scalar Gaussian variable; a write replaces one slot by a linear combination of all of them plus fresh
noise, so the state's mean and covariance follow $\mu' = L\mu$, $\Sigma' = L\Sigma L^\top + Q$ row by row.

**Float32.** The engine carries the covariance of the *normalized* slots $u_j = (x_j - \alpha_jm)/R_j$ as a deviation
$\Delta = \mathrm{Cov}(u) - \mathbf 1\mathbf 1^\top$ from the exact process (all slots on one exact trajectory with unit
variance). With the new point $u' = \sum_j\ell_ju_j + \sum_j\omega_je_j + \sqrt q\,\xi$ ($e_j$: model errors, if any) and
the row defect $\epsilon = \sum_j\ell_j - 1$ computed in closed form (see the sampler module), the update is
$\mathrm{Cov}(u', u_k) - 1 = (\ell^\top\Delta)_k + \epsilon$ and $\mathrm{Var}(u') - 1 = \ell^\top\Delta\ell + 2\epsilon + \epsilon^2 + q$:
only products of small, accurate quantities, so float32 keeps the $O(h^{p+1})$ defects. Weights are split as
$\ell = e_{\rm base} + \tilde\ell$ with $\tilde\ell_{\rm base} = \epsilon - \sum_{j\ne\rm base}\ell_j$, so that a deviation is
updated as "itself plus small terms" and rounds relative to the small terms only. For modes far from the exact
marginal ($|\Delta_{00}| \ge 1/2$, e.g. the standard start on a huge eigenvalue) the normalized covariance itself
is carried too (same update, relative precision where it is small), and the plain variance of each new point
is formed when it is written, for modes whose final marginal variance is 0 (a zero eigenvalue at $t = 0$).

**Model errors** (`ErrorProfile`): each slot also carries the error of the denoiser evaluated at it (fresh,
independent, when the slot is written), so that an evaluation reused by later steps enters them with the right
correlations.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._sampler._multistep import AbstractMultistepSampler, Combination, Level, StepInfo, alpha_bar_difference
from .._schedule import AbstractSchedule
from ._model_error import ErrorProfile
from ._numerics import safe_sqrt


class _Geometry(NamedTuple):
    r"""Per-mode shape of one level: $r = 1/R$, $c = \lambda\alpha r = \sqrt\lambda\cos\varphi$, $s = \sigma r = \sin\varphi$."""

    r: Array
    c: Array
    sn: Array


def _geometry(level: Level, lam: Array) -> _Geometry:
    variance = level.alpha_bar * lam + level.one_minus_alpha_bar
    ok = variance > 0
    r = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, variance, 1.0)), 0.0)
    return _Geometry(r, lam * level.alpha * r, level.sigma * r)


class MultistepState(NamedTuple):
    """The scan carry: slot levels and solver state (scalars), slot geometry, means and covariances (per mode)."""

    levels: tuple[Level, ...]
    solver: Any
    geometry: tuple[_Geometry, ...]
    mean_normalized: tuple[Array, ...]
    """Mean of $u_j = (x_j - \\alpha_jm)/R_j$ per unit of $m$, per slot."""
    deviation: dict
    """Normalized covariance minus the exact one, `(i, j) -> array` for i <= j over slots then error slots."""
    normalized: dict
    """Normalized covariance itself (error slots in data units), same indexing."""
    plain_mean: tuple[Array, ...]
    """Mean of $x_j - \\alpha_jm$ per unit of $m$, formed when slot j was written (for $R_j = 0$)."""
    plain_variance: tuple[Array, ...]
    """Variance of $x_j$, formed when slot j was written (for $R_j = 0$)."""


def _get(matrix: dict, i: int, j: int) -> Array:
    return matrix[(i, j) if i <= j else (j, i)]


def _is_zero(x) -> bool:
    """A weight that is zero by the sampler's structure: a Python number 0 (not a traced array)."""
    return isinstance(x, (int, float)) and x == 0


def _dot(weights, values) -> Array | float:
    """sum_j w_j v_j over the weights that are not structurally zero (`_is_zero`): a step writing from 2 of
    PNDM's 6 slots then costs 2 terms per covariance entry, not 6, in run time and in the compiled program."""
    return sum((w * v for w, v in zip(weights, values) if not _is_zero(w)), 0.0)


class _Row(NamedTuple):
    """One combination turned into per-mode coefficients."""

    base: int
    ell: list  # normalized weights on the slots
    ell_small: list  # ell minus the unit vector of the base slot, the base entry from the accurate defect
    kappa: list  # R_new * ell: the new point's unnormalized weights on the normalized slots
    omega: list  # normalized weights on the slots' errors (empty without a profile)
    omega_plain: list
    defect: Array  # sum(ell) - 1, accurate
    fresh_normalized: Array
    fresh: Array
    data_residual: Array
    geometry: _Geometry


def _weights(cmb: Combination, levels, num_slots: int):
    """Total weights A_j on D_j and S_j on eps_hat_j (x_base = alpha D + sigma eps_hat)."""
    A = [cmb.data[j] + cmb.scale * levels[j].alpha if j == cmb.base else cmb.data[j] for j in range(num_slots)]
    S = [cmb.noise[j] + cmb.scale * levels[j].sigma if j == cmb.base else cmb.noise[j] for j in range(num_slots)]
    return A, S


def _defect(cmb, A, S, levels, geom, new: _Geometry, lam, schedule, grid_slots, grid_new) -> Array:
    """sum_j ell_j - 1 from small exact factors (module docstring of `_sampler._multistep`)."""
    base, level = cmb.base, cmb.level
    alpha_n, sigma_n = level.alpha, level.sigma
    safe_alpha_n = jnp.where(alpha_n > 0, alpha_n, 1.0)
    rho_a = cmb.data_residual / safe_alpha_n
    # Slots other than the base that the combination does not read (both weights structurally zero) add nothing.
    others = [j for j in range(len(levels)) if j != base and not (_is_zero(A[j]) and _is_zero(S[j]))]
    c_tilde = {j: 0.0 if _is_zero(A[j]) else A[j] / safe_alpha_n for j in others}
    c_tilde[base] = 1 + rho_a - sum((c_tilde[j] for j in others), 0.0)
    sqrt_lam = safe_sqrt(lam)
    total = rho_a
    for j in sorted(c_tilde):
        if _is_zero(c_tilde[j]):
            continue
        # cos(phi_j - phi_new) - 1 = -sin^2/(1 + cos), sin(phi_j - phi_new) = sqrt(lam)(abar_new - abar_j) r_j r_new / X.
        d_ab = alpha_bar_difference(schedule, levels[j], level, on_grid=grid_slots[j] and grid_new)
        cross = levels[j].sigma * alpha_n + levels[j].alpha * sigma_n
        sin_d = sqrt_lam * d_ab * geom[j].r * new.r / jnp.where(cross > 0, cross, 1.0)
        cos_d = lam * levels[j].alpha * alpha_n * geom[j].r * new.r + geom[j].sn * new.sn
        total = total - c_tilde[j] * sin_d**2 / (1 + cos_d)
    rho_s = cmb.noise_residual - sigma_n * rho_a
    noise_part = rho_s * geom[base].sn
    for j in others:
        # sin(phi_j) - sin(phi_base) = lam (abar_base - abar_j) (r_j r_base)^2 / (sin phi_j + sin phi_base).
        d_ab = alpha_bar_difference(schedule, levels[j], levels[base], on_grid=grid_slots[j] and grid_slots[base])
        den = geom[j].sn + geom[base].sn
        d_sin = lam * d_ab * (geom[j].r * geom[base].r) ** 2 / jnp.where(den > 0, den, 1.0)
        noise_part = noise_part + (S[j] - c_tilde[j] * sigma_n) * d_sin
    return total + noise_part * new.r


def _row(cmb, state: MultistepState, lam, schedule, grid_slots, grid_new, with_errors) -> _Row:
    levels, geom = state.levels, state.geometry
    s = len(levels)
    new = _geometry(cmb.level, lam)
    A, S = _weights(cmb, levels, s)
    kappa = [_dot((A[j], S[j]), (geom[j].c, geom[j].sn)) for j in range(s)]
    omega_plain = []
    if with_errors:
        for j in range(s):
            ratio = jnp.where(levels[j].sigma > 0, levels[j].alpha / jnp.where(levels[j].sigma > 0, levels[j].sigma, 1.0), 0.0)
            omega_plain.append(_dot((1.0, cmb.noise[j]), (cmb.data[j], -ratio)))  # data_j - noise_j alpha_j / sigma_j
    ell = [0.0 if _is_zero(k) else k * new.r for k in kappa]
    defect = _defect(cmb, A, S, levels, geom, new, lam, schedule, grid_slots, grid_new)
    # ell_base - 1 = defect - sum of the other weights: the small part with full relative precision, so that
    # multiplying a deviation by ell_base rounds only relative to that small part (1e4 steps in float32).
    ell_small = list(ell)
    ell_small[cmb.base] = defect - sum((w for j, w in enumerate(ell) if j != cmb.base and not _is_zero(w)), 0.0)
    return _Row(
        base=cmb.base,
        ell=ell,
        ell_small=ell_small,
        kappa=kappa,
        omega=[0.0 if _is_zero(w) else w * new.r for w in omega_plain],
        omega_plain=omega_plain,
        defect=defect,
        fresh_normalized=cmb.fresh * new.r**2,
        fresh=jnp.asarray(cmb.fresh),
        data_residual=jnp.asarray(cmb.data_residual),
        geometry=new,
    )


def _new_row(matrix: dict, row: _Row, n_slots: int, n_total: int, defect) -> tuple[list, Array]:
    """Covariances of the new point with every state component, and its variance, from `matrix`:

    row_k = M_{base,k} + sum_j ell_small_j M_{j,k} (+ eps for slots in deviation form), and
    var = row_base + sum_j ell_small_j row_j + q (+ eps in deviation form), where the sums run over the
    slots' and the errors' weights. In deviation form (M = Cov(u) - 1 1^T on the slots) every term is a
    deviation times a small weight, or the defect; in plain normalized form, a covariance plus small terms."""
    small = row.ell_small + row.omega
    out = []
    for k in range(n_total):
        value = _get(matrix, row.base, k) + _dot(small, [_get(matrix, j, k) for j in range(len(small))])
        out.append(value + defect if k < n_slots else value)
    var = out[row.base] + _dot(small, out) + defect + row.fresh_normalized
    return out, var


def _plain_moments(state: MultistepState, row: _Row, n_slots: int):
    """Mean and variance of the new point in plain units (x - alpha m): sum_j kappa_j u_j + sum_j w_j e_j + noise."""
    weights = row.kappa + row.omega_plain
    cov = state.normalized
    used = [i for i, w in enumerate(weights) if not _is_zero(w)]
    var = sum((weights[i] * weights[j] * _get(cov, i, j) for i in used for j in used), 0.0)
    mean = _dot(row.kappa, state.mean_normalized) + row.data_residual
    return mean, var + row.fresh


def _write(state: MultistepState, target: int | None, row: _Row, level: Level, moment, n_slots: int, n_err: int):
    """Put the new point in slot `target` (or push it in front) and return the new carry."""
    n_total = n_slots + n_err
    dev_row, dev_var = _new_row(state.deviation, row, n_slots, n_total, row.defect)
    norm_row, norm_var = _new_row(state.normalized, row, n_slots, n_total, 0.0)
    plain_mean, plain_var = _plain_moments(state, row, n_slots)
    mean_normalized_new = (
        state.mean_normalized[row.base]
        + _dot(row.ell_small, state.mean_normalized)
        + row.data_residual * row.geometry.r
    )

    # Index maps: for each new index, where it comes from ("new" = the new point, "err" = its fresh error).
    if target is None:
        source = ["new"] + list(range(n_slots - 1))
        source += (["err"] + [n_slots + j for j in range(n_slots - 1)]) if n_err else []
    else:
        source = [("new" if j == target else j) for j in range(n_slots)]
        source += [("err" if j == target else n_slots + j) for j in range(n_err)]

    def build(matrix, new_row, new_var):
        zero = jnp.zeros_like(new_var)
        out = {}
        for i in range(n_total):
            for j in range(i, n_total):
                a, b = source[i], source[j]
                if a == "err" or b == "err":
                    out[(i, j)] = moment if a == b else zero
                elif a == "new" and b == "new":
                    out[(i, j)] = new_var
                elif a == "new" or b == "new":
                    other = b if a == "new" else a
                    out[(i, j)] = new_row[other]
                else:
                    out[(i, j)] = _get(matrix, a, b)
        return out

    def pick(items, new_item):
        return tuple(new_item if source[j] == "new" else items[source[j]] for j in range(n_slots))

    return state._replace(
        levels=pick(state.levels, level),
        geometry=pick(state.geometry, row.geometry),
        mean_normalized=pick(state.mean_normalized, mean_normalized_new),
        deviation=build(state.deviation, dev_row, dev_var),
        normalized=build(state.normalized, norm_row, norm_var),
        plain_mean=pick(state.plain_mean, plain_mean),
        plain_variance=pick(state.plain_variance, plain_var),
    )


def initial_state(sampler, schedule, t0, lam, init_variance, model_error: ErrorProfile | None) -> MultistepState:
    """Every slot holds the initial point: exact (`init_variance=None`) or N(0, init_variance) in VP units."""
    s = sampler.num_slots
    level = Level.at(schedule, t0)
    geom = _geometry(level, lam)
    R2 = level.alpha_bar * lam + level.one_minus_alpha_bar
    if init_variance is None:
        mean, dev, plain = jnp.zeros_like(lam), jnp.zeros_like(lam), R2
    else:
        c = jnp.asarray(init_variance, dtype=lam.dtype)
        mean = jnp.broadcast_to(-level.alpha, lam.shape).astype(lam.dtype)
        # c / R^2 - 1 = ((c - 1) + abar (1 - lam)) / R^2, without cancellation for c = 1.
        dev = ((c - 1) + level.alpha_bar * (1 - lam)) * geom.r**2
        plain = jnp.broadcast_to(c, lam.shape).astype(lam.dtype)
    normalized_var = plain * geom.r**2
    n_err = s if model_error is not None else 0
    moment = model_error(level.log_snr) * jnp.ones_like(lam) if n_err else None
    deviation, normalized = {}, {}
    for i in range(s + n_err):
        for j in range(i, s + n_err):
            if i < s and j < s:
                deviation[(i, j)], normalized[(i, j)] = dev, normalized_var
            elif i >= s and j >= s:
                deviation[(i, j)] = normalized[(i, j)] = moment
            else:
                deviation[(i, j)] = normalized[(i, j)] = jnp.zeros_like(lam)
    return MultistepState(
        levels=(level,) * s,
        solver=sampler.init(schedule, t0),
        geometry=(geom,) * s,
        mean_normalized=(mean * geom.r,) * s,
        deviation=deviation,
        normalized=normalized,
        plain_mean=(mean,) * s,
        plain_variance=(plain,) * s,
    )


def multistep_step(
    sampler: AbstractMultistepSampler,
    schedule: AbstractSchedule,
    lam: Array,
    model_error: ErrorProfile | None,
    state: MultistepState,
    t_next: Array,
    info: StepInfo,
) -> MultistepState:
    """One step of a multistep sampler on the per-mode state."""
    s = sampler.num_slots
    grid_slots = sampler.grid_slots
    with_errors = model_error is not None
    writes, solver = sampler.step(schedule, state.levels, Level.at(schedule, t_next), state.solver, info)
    state = state._replace(solver=solver)
    for target, cmb in writes:
        slot = 0 if target is None else target
        row = _row(cmb, state, lam, schedule, grid_slots, grid_slots[slot], with_errors)
        moment = model_error(cmb.level.log_snr) * jnp.ones_like(lam) if with_errors else None
        state = _write(state, target, row, cmb.level, moment, s, s if with_errors else 0)
    return state


def final_moments(state: MultistepState):
    """Slot 0 at the end: its level, mean deviation, normalized variance deviation, plain variance."""
    r = state.geometry[0].r
    ok = r > 0
    safe_r = jnp.where(ok, r, 1.0)
    mean = jnp.where(ok, state.mean_normalized[0] / safe_r, state.plain_mean[0])
    variance = jnp.where(ok, state.normalized[(0, 0)] / safe_r**2, state.plain_variance[0])
    return state.levels[0], mean, state.deviation[(0, 0)], variance
