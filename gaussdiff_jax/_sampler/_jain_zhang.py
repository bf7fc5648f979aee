r"""The Jain–Zhang sampler ([JZ]; MATH.md sections 2 and 5) as an ordinary one-step sampler with lookahead.

[JZ] work in the Ornstein–Uhlenbeck clock $\tau = \tfrac12\int_0^t\beta$ ($e^{-2\tau} = \bar\alpha$). One iteration, from
grid point $t_k$ to $t_{k+1}$, is an exponential-integrator step of the probability-flow ODE with the score
frozen at $t_k$ that lands two grid points ahead, at $t_{k+2}$ ($x \mapsto e^{H}x + (e^{H}-1)s(x, t_k)$,
$H = \tfrac12\log(\bar\alpha(t_{k+2})/\bar\alpha(t_k))$), followed by an exact forward noising back up to $t_{k+1}$
($x \mapsto e^{-h}x + \sqrt{1 - e^{-2h}}\,\xi$, $e^{-2h} = \bar\alpha(t_{k+1})/\bar\alpha(t_{k+2})$). On a grid of $N + 1$ points it
makes $N - 1$ evaluations and stops at $t_{N-1}$ (their $\tau_1$, not $\delta$).

Per mode ($u = (\lambda - 1)\bar\alpha(t_k)$, $R^2 = 1 + u$) the ODE step's gain is $A = (1 + ue^H)/(1 + u)$, and from the
exact marginal it misses the exact variance at $t_{k+2}$ by $-u(e^H - 1)^2/R^2$; the forward noising is exact, so the
step's relative variance defect is $e^{-2h}$ times that over $R^2(t_{k+1})$ (no cancellation), and the mean is
transported exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._base import AbstractSampler, AffineStep, marginal
from ._registry import register


@register("jain-zhang", "Jain-Zhang: exponential-integrator ODE step over two grid steps, then forward noising",
          aliases=("jz", "jainzhang"))
class JainZhang(AbstractSampler):
    r"""The [JZ] sampler: exponential-integrator ODE step over $H_k$, then exact forward noising over $h_{k-1}$.

    Its step from $t_k$ to $t_{k+1}$ needs $t_{k+2}$ (`lookahead = 1`): `sample_law` runs $N - 1$ steps on
    $N + 1$ points and returns the law at $t_{N-1}$. Use `gdj.jain_zhang_grid` and `gdj.ou_schedule` to work
    in [JZ]'s own clock.
    """

    stochastic = True
    lookahead = 1
    needs_beta = False

    def num_evaluations(self, schedule, ts) -> int:
        return max(int(np.shape(ts)[0]) - 2, 0)

    def steps_for_nfe(self, nfe: int, *, ends_clean: bool = True) -> int:
        return int(nfe) + 1

    def _clock(self, schedule, t, t_next, t_after):
        big_h = 0.5 * schedule.log_alpha_bar_ratio(t, t_after)  # ODE from tau_k down to tau_{k-2}
        two_h = schedule.log_alpha_bar_ratio(t_next, t_after)  # re-noise from tau_{k-2} up to tau_{k-1}
        return big_h, two_h

    def step(self, schedule, t, t_next, lam, *, t_after) -> AffineStep:
        big_h, two_h = self._clock(schedule, t, t_next, t_after)
        mg, mg_next = marginal(schedule, t, lam), marginal(schedule, t_next, lam)
        u = (lam - 1) * mg.alpha_bar
        em1 = jnp.expm1(big_h)
        keep = jnp.exp(-two_h)  # e^{-2h}
        gain = jnp.exp(-0.5 * two_h) * (1 + u * jnp.exp(big_h)) / (1 + u)
        defect = keep * (-u * em1**2 / mg.variance) / mg_next.variance
        weight = jnp.exp(-0.5 * two_h) * em1 * mg.sqrt_alpha_bar / mg.one_minus_alpha_bar
        return AffineStep(
            gain_minus_one=gain - 1,
            offset=mg_next.sqrt_alpha_bar - gain * mg.sqrt_alpha_bar,
            noise_variance=jnp.broadcast_to(-jnp.expm1(-two_h), jnp.shape(lam)),
            variance_defect=defect,
            mean_defect=jnp.zeros_like(gain),
            exact_gain=gain,
            evaluations=((t, weight),),
        )

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise, *, t_after):
        big_h, two_h = self._clock(schedule, t, t_next, t_after)
        y = jnp.exp(big_h) * x + jnp.expm1(big_h) * score_fn(x, t)
        return jnp.exp(-0.5 * two_h) * y + jnp.sqrt(-jnp.expm1(-two_h)) * noise
