r"""Samplers that integrate the denoising ODE in the noise level sigma (DDIM, EDM).

They act on the centred coordinate $z = y - \sqrt{\bar\alpha}\,m$, which they transport exactly, so
the mean is always exact: $C = \sqrt{\bar\alpha'} - A\sqrt{\bar\alpha}$. Only $\bar\alpha$ at the grid
points enters, never $\beta$, so they work for schedules with $\bar\alpha(1) = 0$ (infinite $\sigma$).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._core._numerics import safe_sqrt

from .._core._errors import check
from ._base import AbstractSampler, AffineStep, denoise, marginal
from ._registry import register


def _safe_sqrt_ratio(num, den):
    """sqrt(num/den) with 0 where den == 0 (NaN-free in value and gradient)."""
    ok = den > 0
    return jnp.where(ok, safe_sqrt(num / jnp.where(ok, den, 1.0)), 0.0)


@register("ddim", "DDIM (eta from --eta, default 0: deterministic)")
class DDIM(AbstractSampler):
    r"""DDIM (Song, Meng, Ermon) with stochasticity $\eta \in [0, 1]$; $\eta = 0$ is deterministic.

    Per mode (MATH.md section 2): $z' = g\,z + s_k\xi$ with
    $g = \big(\sqrt{\bar a'\bar a}\,\lambda + \sqrt{(1-\bar a'-s_k^2)(1-\bar a)}\big)/R^2$ and
    $s_k^2 = \eta^2\frac{1-\bar a'}{1-\bar a}(1 - \bar a/\bar a')$. $\eta = 0$ equals Euler in $\sigma$ on
    $x/\sqrt{\bar\alpha}$ (k-diffusion `sample_euler`) and has the rotation form: with
    $\theta = \arctan(\sigma/\sqrt\lambda)$ the relative variance defect of a step is exactly
    $-\sin^2\Delta\theta$, which is what keeps float32 exact on fine grids. $\eta = 1$ is DDPM
    ancestral sampling with the posterior variance.
    """

    eta: float = 0.0

    needs_beta = False
    stochastic = True

    def __check_init__(self):
        if not (0.0 <= float(self.eta) <= 1.0):
            raise ValueError(f"DDIM: eta must lie in [0, 1]; got {self.eta}.")

    @property
    def is_deterministic(self) -> bool:
        return float(self.eta) == 0.0

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise):
        ab, ab_n = schedule.alpha_bar(t), schedule.alpha_bar(t_next)
        om, om_n = schedule.one_minus_alpha_bar(t), schedule.one_minus_alpha_bar(t_next)
        if denoiser_fn is None:
            eps_hat = -jnp.sqrt(om) * score_fn(x, t)
            x0_hat = (x - jnp.sqrt(om) * eps_hat) / jnp.sqrt(ab)
        else:
            x0_hat = denoise(schedule, t, x, score_fn, denoiser_fn)
            eps_hat = (x - jnp.sqrt(ab) * x0_hat) / jnp.sqrt(om)
        s2 = self.eta**2 * om_n / om * (schedule.alpha_bar_increment(t, t_next) / ab_n)
        return jnp.sqrt(ab_n) * x0_hat + jnp.sqrt(om_n - s2) * eps_hat + jnp.sqrt(s2) * noise

    def step(self, schedule, t, t_next, lam) -> AffineStep:
        mg, mg_next = marginal(schedule, t, lam), marginal(schedule, t_next, lam)
        ab, ab_n = mg.alpha_bar, mg_next.alpha_bar
        om, om_n = mg.one_minus_alpha_bar, mg_next.one_minus_alpha_bar
        d_ab = schedule.alpha_bar_increment(t, t_next)
        # Fraction of the next noise level redrawn: 1 - kappa^2 = s_k^2 / (1 - abar').
        redraw = jnp.asarray(self.eta) ** 2 * d_ab / (ab_n * om)
        redraw = check(
            redraw,
            ~(redraw <= 1),
            "DDIM: eta^2 (1 - abar/abar') / (1 - abar) exceeds 1 on a step; lower eta.",
        )
        kappa = safe_sqrt(1 - redraw)
        noise = redraw * om_n
        sqrt_om, sqrt_om_n = safe_sqrt(om), safe_sqrt(om_n)
        sq_ab, sq_ab_n = mg.sqrt_alpha_bar, mg_next.sqrt_alpha_bar
        d_sqrt_ab = d_ab / (sq_ab_n + sq_ab)
        # g - 1 = [lam sqrt(abar)(sqrt(abar') - sqrt(abar)) + sqrt(1-abar)(kappa sqrt(1-abar') - sqrt(1-abar))] / R^2
        d_noise = -(d_ab + noise) / (kappa * sqrt_om_n + sqrt_om)
        gain_minus_one = (lam * sq_ab * d_sqrt_ab + sqrt_om * d_noise) / mg.variance
        # The gain itself, directly: it can be << 1 (final jump to abar' = 1 on a tiny eigenvalue).
        gain = (lam * sq_ab * sq_ab_n + kappa * sqrt_om_n * sqrt_om) / mg.variance
        offset = sq_ab_n - gain * sq_ab

        # Rotation form of the variance defect (exact, no cancellation). sin/cos of theta and theta'.
        R, R_n = safe_sqrt(mg.variance), safe_sqrt(mg_next.variance)
        sin_t = safe_sqrt(om) / R
        sin_tn = _safe_sqrt_ratio(om_n, mg_next.variance)
        R_n_safe = jnp.where(R_n > 0, R_n, 1.0)
        cross = safe_sqrt(om * ab_n) + safe_sqrt(ab * om_n)
        cross = jnp.where(cross > 0, cross, 1.0)
        sin_d = safe_sqrt(lam) * d_ab / (R * R_n_safe * cross)
        cos_d = (lam * safe_sqrt(ab * ab_n) + safe_sqrt(om * om_n)) / (R * R_n_safe)
        one_minus_cos = sin_d**2 / (1 + cos_d)
        one_minus_kappa = redraw / (1 + kappa)
        one_minus_x = one_minus_cos + one_minus_kappa * sin_t * sin_tn
        variance_defect = -one_minus_x * (2 - one_minus_x) + redraw * sin_tn**2
        # x' = sqrt(abar') D + kappa sqrt(1 - abar') eps_hat + noise, eps_hat = (x - sqrt(abar) D)/sqrt(1 - abar).
        error_weight = sq_ab_n - kappa * sqrt_om_n * sq_ab / jnp.where(sqrt_om > 0, sqrt_om, 1.0)
        return AffineStep(
            gain_minus_one=gain_minus_one,
            offset=offset,
            noise_variance=jnp.broadcast_to(noise, jnp.shape(gain_minus_one)),
            variance_defect=variance_defect,
            mean_defect=jnp.zeros_like(gain_minus_one),
            exact_gain=gain,
            evaluations=((t, jnp.broadcast_to(error_weight, jnp.shape(gain_minus_one))),),
        )


@register("edm-heun", "EDM's Heun in sigma (Karras et al.)", aliases=("edmheun", "edm_heun"))
class EDMHeun(AbstractSampler):
    r"""EDM's deterministic Heun sampler (Karras et al., Algorithm 1 with no churn).

    The trapezoid rule on $d\bar x/d\sigma = \sigma(\bar x - m)/(\lambda + \sigma^2)$, $\bar x = x/\sqrt{\bar\alpha}$,
    with an Euler step where $\sigma' = 0$. Needs finite $\sigma$ at every grid point ($\bar\alpha > 0$).
    """

    evaluations_per_step = 2
    order = 2
    needs_beta = False

    def num_evaluations(self, schedule, ts) -> int:
        # The last step to sigma = 0 is an Euler step (one evaluation).
        n = int(np.shape(ts)[0]) - 1
        return 2 * n - (1 if n >= 1 and float(schedule.sigma(ts[-1])) == 0.0 else 0)

    def steps_for_nfe(self, nfe: int, *, ends_clean: bool = True) -> int:
        return (int(nfe) + 1) // 2 if ends_clean else int(nfe) // 2

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise):
        # Heun in sigma on xbar = x / sqrt(abar): d xbar / d sigma = -sigma sqrt(abar) s(x, t).
        sig, sig_n = schedule.sigma(t), schedule.sigma(t_next)
        ra, ra_n = jnp.sqrt(schedule.alpha_bar(t)), jnp.sqrt(schedule.alpha_bar(t_next))
        xbar = x / ra
        k1 = -sig * ra * score_fn(x, t)
        pred = xbar + (sig_n - sig) * k1
        k2 = -sig_n * ra_n * score_fn(ra_n * pred, t_next)
        heun = xbar + 0.5 * (sig_n - sig) * (k1 + k2)
        return ra_n * jnp.where(sig_n > 0, heun, pred)

    def step(self, schedule, t, t_next, lam) -> AffineStep:
        mg, mg_next = marginal(schedule, t, lam), marginal(schedule, t_next, lam)
        sig, sig_n = schedule.sigma(t), schedule.sigma(t_next)
        d_sig = sig_n - sig  # < 0
        u1 = d_sig * sig * mg.alpha_bar / mg.variance  # (s' - s) s / (lam + s^2)
        lam_s2_next = lam + sig_n**2
        u2 = d_sig * sig_n / jnp.where(lam_s2_next > 0, lam_s2_next, 1.0)
        euler = u1
        heun = 0.5 * (u1 + u2 * (1 + u1))
        g_minus_one = jnp.where(sig_n > 0, heun, euler)  # gain in xbar, minus one
        scale_minus_one = jnp.expm1(0.5 * schedule.log_alpha_bar_ratio(t, t_next))  # sqrt(abar'/abar) - 1
        gain_minus_one = scale_minus_one + (1 + scale_minus_one) * g_minus_one
        # The gain itself, as a ratio of sums of positive terms: on a coarse step 1 + u1 = (lam + s s')/(lam + s^2)
        # can be ~1e-4 and (1 + u1)(1 + u2) ~ -1, so 1 + (A - 1) would keep no relative precision in float32.
        # Heun: g = ((1 + u1)(1 + u2) + 1)/2 = (2 lam^2 + 3 lam s'^2 + lam s^2 + 2 s s'^3) / (2 (lam + s^2)(lam + s'^2)).
        lam_s2 = mg.variance / mg.alpha_bar  # lam + s^2
        lam_s2_next_safe = jnp.where(lam_s2_next > 0, lam_s2_next, 1.0)
        numerator = lam * (2 * lam + 3 * sig_n**2 + sig**2) + 2 * sig * sig_n**3
        g_heun = numerator / (2 * lam_s2 * lam_s2_next_safe)
        g_euler = (lam + sig * sig_n) / lam_s2
        gain = (1 + scale_minus_one) * jnp.where(sig_n > 0, g_heun, g_euler)
        offset = mg_next.sqrt_alpha_bar - gain * mg.sqrt_alpha_bar
        # Denoiser errors e1 (at sigma) and e2 (at the predictor, sigma'): d = (xbar - D)/sigma, and the
        # predictor's error reaches D(pred) with the denoiser's gain lam/(lam + sigma'^2).
        ra_n = mg_next.sqrt_alpha_bar
        safe_sig = jnp.where(sig > 0, sig, 1.0)
        safe_sig_n = jnp.where(sig_n > 0, sig_n, 1.0)
        through = sig_n**2 / lam_s2_next_safe * d_sig / safe_sig_n  # (1 - lam/(lam + s'^2)) (s' - s)/s'
        w1_heun = -0.5 * ra_n * d_sig / safe_sig * (1 + through)
        w1 = jnp.where(sig_n > 0, w1_heun, -ra_n * d_sig / safe_sig)
        w2 = jnp.where(sig_n > 0, -0.5 * ra_n * d_sig / safe_sig_n, 0.0) * jnp.ones_like(lam)
        return AffineStep(
            gain_minus_one=gain_minus_one,
            offset=offset,
            noise_variance=jnp.zeros_like(gain_minus_one),
            mean_defect=jnp.zeros_like(gain_minus_one),
            exact_gain=gain,
            evaluations=((t, w1), (t_next, w2)),
        )
