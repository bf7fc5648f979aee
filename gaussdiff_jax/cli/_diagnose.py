r"""Saying why: the actual cause of a failed evaluation, and where a KL comes from.

**Why a KL can grow with the NFE** (what `kl_breakdown` reports). On CIFAR-10 with the EDM range
(80 -> 0.002), `euler` on `edm` gives KL 1.5e8 at NFE 10 and 1.6e9 at NFE 20, `heun` on `cosine` 7.3e4
at NFE 100, 5.8e4 at 500 and 3.5e5 at 1000, while W2 decreases steadily. Almost all of it (97-99.99 %)
comes from *one* mode whose eigenvalue is tiny (2e-6 .. 1e-4, close to $\sigma_{\min}^2$), on the last
step(s): that step is far longer than the mode's time scale ($\lambda + \sigma^2$), and the explicit
step's gain for it passes through 0 (Euler: $-0.05$; Heun on the last step to $\sigma = 0.002$:
$-4.5\cdot10^{-4}$). The mode's output variance collapses to $10^{-6}$..$10^{-9}$ of the target's, and
KL(target ‖ sample) grows like the inverse of that ratio, while W2 pays at most the target variance
($\approx\sigma_{\min}^2$). Which eigenvalue sits nearest the gain's zero depends on the grid, so the
KL jumps up and down with $N$ until the last step resolves the smallest modes. The numbers are right;
the line printed says which modes and which step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._problem import sigma_at
from ._shared import gdj, one_line


def _samplers_in_sigma() -> str:
    samplers = gdj().samplers
    return ", ".join(n for n in samplers.available() if not samplers.entry(n).cls.needs_beta)


def explain_failure(problem, schedule, ts, error: BaseException) -> str:
    """One line naming the actual cause of a failed evaluation of `problem.sampler` on `(schedule, ts)`."""
    ts = np.asarray(ts, dtype=np.float64)
    sig = sigma_at(schedule, ts)
    name, cls = problem.sampler_name, type(schedule).__name__
    if problem.sampler.needs_beta:
        beta = np.asarray(schedule.beta(jnp.asarray(ts)), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(beta))
        if bad.size:
            k = int(bad[0])
            fix = (
                "end at --sigma-min > 0"
                if sig[k] == 0
                else "start at a finite --sigma-max"
                if not np.isfinite(sig[k])
                else "use another schedule"
            )
            return (
                f"{name} is a sampler in t and needs a finite beta(t) at every grid point, but {cls}.beta is "
                f"{beta[k]} at t = {ts[k]:.6g} (grid point {k}, sigma = {sig[k]:.4g}): {fix}, or use a sampler in "
                f"sigma ({_samplers_in_sigma()})"
            )
    if not np.all(np.isfinite(sig[1:])) or np.any(np.isnan(sig)):
        k = int(np.flatnonzero(~np.isfinite(sig[1:]) | np.isnan(sig[1:]))[0]) + 1
        return f"{cls} has sigma = {sig[k]} at t = {ts[k]:.6g} (grid point {k}): only the first point may be at sigma = inf"
    if np.any(problem.lam == 0) and sig[-1] == 0:
        return (
            f"the grid ends at sigma = 0 and the spectrum has {int(np.sum(problem.lam == 0))} zero eigenvalue(s): "
            f"{name} divides by their variance 0 there. Use --sigma-min > 0 or --floor"
        )
    return one_line(error)


def _target_variance(law, lam: np.ndarray, target: str) -> np.ndarray:
    if target == "data":
        return lam
    return np.asarray(law.alpha_bar_min) * lam + np.asarray(law.one_minus_alpha_bar_min)


def _worst_step(problem, schedule, ts, lam_mode: float):
    """`(k, variance factor, gain)` of the step whose one-step variance error is largest for one mode
    (started on the exact marginal), or `None` for samplers without a one-step affine map."""
    lam = jnp.asarray([lam_mode])

    def one(t, t_next):
        step = problem.sampler.step(schedule, t, t_next, lam)
        r0 = schedule.alpha_bar(t) * lam + schedule.one_minus_alpha_bar(t)
        r1 = schedule.alpha_bar(t_next) * lam + schedule.one_minus_alpha_bar(t_next)
        gain = jnp.broadcast_to(step.gain, lam.shape)
        return ((gain**2 * r0 + step.noise_variance) / r1)[0], gain[0]

    try:
        factors, gains = jax.vmap(one)(jnp.asarray(ts[:-1]), jnp.asarray(ts[1:]))
    except (NotImplementedError, AttributeError, TypeError, ValueError):
        return None
    factors, gains = np.asarray(factors), np.asarray(gains)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = int(np.nanargmax(np.abs(np.log(factors))))
    return k, float(factors[k]), float(gains[k])


def kl_breakdown(problem, schedule, ts) -> str | None:
    """Where the KL of `problem.sampler` on `(schedule, ts)` comes from: one line, or `None` if undefined.

    "X % of the KL comes from the n modes with eigenvalue <= b", and for the largest contributor its output
    variance relative to the target's and the step with the largest one-step variance error.
    """
    g, ts = gdj(), np.asarray(ts, dtype=np.float64)
    law = g.sample_law(problem.source, schedule, problem.sampler, jnp.asarray(ts), init=problem.init)
    per_mode = np.asarray(g.kl(problem.source, law, target=problem.target, direction=problem.direction, reduce=False))
    total = float(per_mode.sum())
    if not (np.isfinite(total) and total > 0):
        return None
    order = np.argsort(-per_mode)
    share = np.cumsum(per_mode[order]) / total
    n = int(np.searchsorted(share, 0.9)) + 1
    chosen = problem.lam[order[:n]]
    lo, hi = float(chosen.min()) + 0.0, float(chosen.max())
    if n == 1:
        which = f"1 mode (eigenvalue {hi:.3g})"
    elif np.sum(problem.lam <= hi) <= 1.2 * n:  # they are (nearly) the smallest eigenvalues
        which = f"the {n} modes with eigenvalue <= {hi:.3g}"
    else:
        which = f"{n} modes with eigenvalues in [{lo:.3g}, {hi:.3g}]"
    text = f"{100 * share[n - 1]:.1f}% of the KL ({total:.4g}) comes from {which}, of {per_mode.size}"
    top = int(order[0])
    ratio = float(np.asarray(law.variance)[top] / _target_variance(law, problem.lam, problem.target)[top])
    if n > 1:
        text += f"; the largest ({100 * per_mode[top] / total:.2g}%), eigenvalue {problem.lam[top]:.3g}, ends"
    else:
        text += "; it ends"
    text += f" with {ratio:.3g} x the target variance"
    worst = _worst_step(problem, schedule, ts, float(problem.lam[top]))
    if worst is not None:
        k, factor, gain = worst
        sig = sigma_at(schedule, ts[k : k + 2])
        text += (
            f"; its largest one-step variance error is at step {k + 1} of {ts.size - 1} (t {ts[k]:.4g} -> "
            f"{ts[k + 1]:.4g}, sigma {sig[0]:.4g} -> {sig[1]:.4g}): variance x {factor:.3g}, gain {gain:.3g}"
        )
    if ratio < 1e-2 and problem.direction == "target_to_sample":
        text += ". A step much longer than the mode's time scale collapses its variance; KL(target || sample) "
        text += "grows like the inverse of that ratio, W2 hardly sees it"
    return text
