r"""Per-class counterparts of diffusers' schedulers (registered into `from_diffusers_scheduler`).

Each handler reads a deep copy of the scheduler after `set_timesteps` (see `_diffusers`), picks the sampler that
performs the same update with the exact model, and places the run's noise levels on a schedule. The samplers:

| diffusers | state | sampler |
|---|---|---|
| `DDIMScheduler` (`eta`) | VP | `DDIM(eta)`; `Relabeled(DDIMStep(eta), landing)` off its stride |
| `DDPMScheduler` | VP | `DDPM(variance=variance_type, clean_jump_noise=timesteps[-1] > 0)` |
| `PNDMScheduler` | VP | `PNDM(skip_prk_steps, prk_midpoint)` (leading-consistent strides only) |
| `IPNDMScheduler` | VP | `IPNDM()` on `Cosine(s=0)` |
| `EulerDiscreteScheduler` | VE | `DDIM()`; `EDMStochastic(solver="euler", churn_input="pre_churn")` with churn |
| `EulerAncestralDiscreteScheduler` | VE | `DDIM(eta=1)` (its sigma_up / sigma_down are DDIM(1)'s) |
| `HeunDiscreteScheduler` | VE | `EDMHeun()` |
| `KDPM2(Ancestral)DiscreteScheduler` | VE | `KDPM2(eta=0 / 1)` |
| `LMSDiscreteScheduler` | VE | `LMS(4)` |
| `EDMEulerScheduler` | VE | `DDIM()`; `EDMStochastic(..., sigma_data)` with churn |
| `DPMSolverMultistepScheduler` | VP / flow | `DPMSolverMultistep(...)`; `DiffusersSDEDPMSolver3M` (SDE, order 3) |
| `DPMSolverSinglestepScheduler` | VP / flow | `DPMSolverSinglestep(..., sde_third_order="diffusers")` |
| `UniPCMultistepScheduler` | VP / flow | `UniPC(...)` |
| `DEISMultistepScheduler` | VP / flow | `DEIS(...)` |
| `FlowMatchEulerDiscreteScheduler` | flow | `DDIM()`; `FlowMatchEuler(stochastic_sampling=True)` |
| `FlowMatchHeunDiscreteScheduler` | flow | `FlowMatchHeun()` |

A final step between equal levels (an identity) is dropped from the grid; multistep samplers are then told the
pipeline's step count (`Truncated`).
"""

from __future__ import annotations

import numpy as np

from .._sampler import (
    DDIM,
    DDPM,
    DEIS,
    IPNDM,
    KDPM2,
    LMS,
    PNDM,
    AbstractMultistepSampler,
    DDIMStep,
    DiffusersSDEDPMSolver3M,
    DPMSolverMultistep,
    DPMSolverSinglestep,
    EDMHeun,
    EDMStochastic,
    FlowMatchEuler,
    FlowMatchHeun,
    Relabeled,
    Truncated,
    UniPC,
)
from .._schedule import Cosine, Discrete, RectifiedFlow
from ._diffusers import (
    Run,
    as_float64,
    counterpart,
    flow_scale,
    init_noise_sigma,
    init_of,
    levels_discrete,
    register_handler,
    sigma_table,
    times_on_discrete,
    times_on_flow,
    ve_scale,
    vp_table,
)

# --- schedulers that index alphas_cumprod (VP state, integer timesteps) ---------------------------

_IDENTITY_AT_0 = (
    "the last step goes from training index 0 to alpha_bar_0 (set_alpha_to_one=False), an identity: dropped."
)


def _indices(run: Run, sched) -> np.ndarray:
    """The integer timesteps; refuses a zero-SNR entry that diffusers turns into NaN with epsilon prediction."""
    idx = as_float64(sched.timesteps).astype(np.int64)
    visited = as_float64(sched.alphas_cumprod)[idx]
    if np.any(visited <= 0) and run.opt("prediction_type", "epsilon") == "epsilon":
        run.refuse(
            "visits alphas_cumprod = 0 (rescale_betas_zero_snr=True) with prediction_type='epsilon': its x0 "
            "prediction (x - sqrt(1 - abar) eps)/sqrt(abar) is 0/0 = NaN there. Use prediction_type='v_prediction'."
        )
    return idx


@register_handler("DDIMScheduler")
def _ddim(run: Run, opts: dict):
    sched = run.copy()
    idx = _indices(run, sched)
    T = int(run.opt("num_train_timesteps", 1000))
    ratio = T // run.n
    schedule = vp_table(run, sched)
    clean = bool(run.opt("set_alpha_to_one", True))
    final = 0.0 if clean else 1.0 / T
    if not clean:
        run.note("set_alpha_to_one=False: the run ends at training index 0 (alpha_bar_0 < 1), not at the clean sample.")
    land_idx = idx - ratio
    ts = np.concatenate([(idx + 1.0) / T, [final]])
    land = np.where(land_idx >= 0, (land_idx + 1.0) / T, final)
    if ts[-2] == ts[-1]:
        if ts.shape[0] == 2:
            run.refuse("runs one step, from training index 0 to index 0: its output is the initial noise.")
        run.note(_IDENTITY_AT_0)
        ts, land = ts[:-1], land[:-1]
    eta = opts["eta"]
    if np.array_equal(land, ts[1:]):
        sampler = DDIM(eta=eta)
    else:
        nxt = np.append(idx[1:], -1)
        missed = [(int(a), int(b), int(c)) for a, b, c in zip(idx, land_idx, nxt) if b != c and b >= 0]
        run.quirk(
            f"steps from timestep t to t - num_train_timesteps // num_inference_steps = t - {ratio}, which is not the "
            f"next timestep with timestep_spacing={run.opt('timestep_spacing')!r} and {run.n} steps (t -> landing, "
            f"next: {missed[:4]}{' ...' if len(missed) > 4 else ''}); the model is then evaluated at the next "
            "timestep on a sample that is at the landing level. Reproduced with Relabeled(DDIMStep(eta), landing)."
        )
        sampler = Relabeled(DDIMStep(eta=eta), land)
    return counterpart(run, schedule, sampler, ts, "standard", nfe=idx.shape[0])


@register_handler("DDPMScheduler")
def _ddpm(run: Run, opts: dict):
    variance = run.opt("variance_type", "fixed_small")
    if variance in ("learned", "learned_range"):
        run.refuse(
            f"has variance_type={variance!r}: the step variance comes from the network's output, which the exact "
            "Gaussian model does not define. Use 'fixed_small' or 'fixed_large'."
        )
    if variance == "fixed_large_log":  # gdj.DDPM takes it as fixed_large (its intent); diffusers' output is NaN
        run.refuse(
            "has variance_type='fixed_large_log': its step takes the square root of _get_variance(), which returns "
            "log(beta_t) < 0 for this type, so every noisy step is NaN in diffusers 0.42 (a diffusers bug)."
        )
    sched = run.copy()
    idx = _indices(run, sched)
    T = int(run.opt("num_train_timesteps", 1000))
    schedule = vp_table(run, sched)
    ts = np.concatenate([(idx + 1.0) / T, [0.0]])
    if variance not in ("fixed_small", "fixed_small_log", "fixed_large"):
        run.refuse(f"has an unknown variance_type {variance!r}.")
    last = int(idx[-1])
    if last == 0:
        run.note("the last timestep is 0: diffusers adds noise only `if t > 0`, so the jump to x0 draws none.")
    elif variance == "fixed_large":
        run.note(f"the last timestep is {last} > 0: the jump to x0 adds noise of variance 1 - alphas_cumprod[{last}].")
    sampler = DDPM(beta="discrete", variance=variance, clean_jump_noise=last > 0)
    return counterpart(run, schedule, sampler, ts, "standard", nfe=idx.shape[0])


# --- schedulers on a sigma table (VE state or VP state with sigma levels) ------------------------


def _drop_identity_end(run: Run, levels: np.ndarray, sampler):
    """A final step between equal levels (final sigma = the last evaluated one) changes nothing: drop it from the
    grid (which must decrease strictly); a multistep sampler is told the pipeline's step count (`Truncated`)."""
    if levels.shape[0] > 2 and levels[-1] == levels[-2]:
        run.note("the last step goes between equal noise levels (final_sigmas_type='sigma_min'), an identity: dropped.")
        if isinstance(sampler, AbstractMultistepSampler):
            sampler = Truncated(sampler, 1)
        return levels[:-1], sampler
    return levels, sampler


def _check_first_timestep(run: Run, sched):
    """diffusers' `index_for_timestep` starts a run at the *second* occurrence of a repeated first timestep."""
    timesteps = as_float64(sched.timesteps)
    if timesteps.shape[0] > 1 and np.sum(timesteps == timesteps[0]) > 1:
        run.refuse(
            f"with {run.n} steps has a repeated first timestep ({timesteps[:4].tolist()} ...): diffusers' "
            "index_for_timestep then starts at its second occurrence (its image-to-image rule), skips the first noise "
            "level and steps past the end of its sigmas (IndexError). This happens with squaredcos_cap_v2 and "
            "use_karras_sigmas, whose timesteps are truncated, not rounded, to integers."
        )


def _sigma_run(run: Run, sched, levels: np.ndarray, sampler, *, state: str, nfe: int):
    """Counterpart of a run along VE levels `levels` on the scheduler's sigma table."""
    _check_first_timestep(run, sched)
    levels, sampler = _drop_identity_end(run, levels, sampler)
    table = sigma_table(sched)
    if np.all(np.diff(table) > 0):
        schedule = Discrete(1.0 / (1.0 + table**2))
        ts = times_on_discrete(schedule, table, levels)
    else:
        run.quirk(
            "its sigma table is not increasing: with rescale_betas_zero_snr=True diffusers replaces alphas_cumprod[-1] "
            "= 0 by 2**-24, which exceeds alphas_cumprod[-2] for this table, so sigma_max is smaller than the sigma of "
            "the index below it. The schedule is a Discrete table of the run's own levels."
        )
        schedule, ts = levels_discrete(levels)
    scale0, scale_n = (ve_scale(levels[0]), ve_scale(levels[-1])) if state == "ve" else (1.0, 1.0)
    init = init_of(init_noise_sigma(sched), scale0)
    if levels[-1] > 0:
        run.note(f"the run ends at sigma = {levels[-1]:.6g} > 0, not at the clean sample.")
    return counterpart(run, schedule, sampler, ts, init, nfe=nfe, output_scale=scale_n)


def _check_euler_options(run: Run):
    if run.opt("interpolation_type", "linear") == "log_linear":
        run.quirk(
            "interpolation_type='log_linear' makes num_inference_steps + 1 sigmas log-uniform from sigma_max to "
            "sigma_min and then appends the final sigma, so the run stops at sigma_min (the appended value is never "
            "reached) and the timesteps given to the model are unrelated to those sigmas."
        )


def _run_levels(sched) -> np.ndarray:
    return as_float64(sched.sigmas)[: len(sched.timesteps) + 1]


def _churn(run: Run, opts: dict, sigma_data):
    """`EDMStochastic` as diffusers' Euler schedulers run churn (`step(s_churn=...)`), or None without churn."""
    if opts["s_churn"] == 0.0:
        return None
    run.quirk(
        "with s_churn > 0 the pipeline evaluates the model on the sample before step() adds the churn noise, and "
        "step() uses that output as if it had been computed at the churned level sigma_hat (EDM evaluates the model "
        "on the churned sample). Reproduced with EDMStochastic(churn_input='pre_churn')."
    )
    return EDMStochastic(
        s_churn=opts["s_churn"], s_tmin=opts["s_tmin"], s_tmax=opts["s_tmax"], s_noise=opts["s_noise"],
        solver="euler", churn_input="pre_churn", sigma_data=sigma_data,
    )


@register_handler("EulerDiscreteScheduler")
def _euler(run: Run, opts: dict):
    _check_euler_options(run)
    sched = run.copy()
    sampler = DDIM()
    if opts["s_churn"] > 0:
        if run.opt("prediction_type", "epsilon") != "epsilon" or run.opt("interpolation_type") == "log_linear":
            run.refuse(
                "with s_churn > 0 needs prediction_type='epsilon' and linear interpolation: its v-prediction x0 uses "
                "sigma where epsilon uses sigma_hat, and log_linear changes the churn's step count."
            )
        sampler = _churn(run, opts, None)
    return _sigma_run(run, sched, _run_levels(sched), sampler, state="ve", nfe=len(sched.timesteps))


@register_handler("EulerAncestralDiscreteScheduler")
def _euler_ancestral(run: Run, opts: dict):
    sched = run.copy()
    return _sigma_run(run, sched, _run_levels(sched), DDIM(eta=1.0), state="ve", nfe=len(sched.timesteps))


def _two_stage_levels(sched) -> np.ndarray:
    """The N + 1 levels of a two-stage scheduler (Heun, KDPM2, FlowMatch Heun), whose sigmas repeat each inner
    level: [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0 (, 0, 0)]; it makes 2N - 1 model calls."""
    sig = as_float64(sched.sigmas)
    steps = (len(sched.timesteps) + 1) // 2
    return np.concatenate([sig[:1], sig[1::2]])[: steps + 1]


@register_handler("HeunDiscreteScheduler")
def _heun(run: Run, opts: dict):
    sched = run.copy()
    return _sigma_run(run, sched, _two_stage_levels(sched), EDMHeun(), state="ve", nfe=len(sched.timesteps))


@register_handler("KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
def _kdpm2(run: Run, opts: dict):
    sched = run.copy()
    sampler = KDPM2(eta=1.0 if run.name.startswith("KDPM2Ancestral") else 0.0)
    run.note("KDPM2's midpoints (sigmas_interpol) are recomputed in float64 from its levels: sqrt(sigma sigma_down).")
    return _sigma_run(run, sched, _two_stage_levels(sched), sampler, state="ve", nfe=len(sched.timesteps))


@register_handler("DPMSolverMultistepScheduler")
def _dpm_multistep(run: Run, opts: dict):
    if run.opt("use_lu_lambdas"):
        run.note("use_lu_lambdas: log-SNR-uniform levels, read from the scheduler.")
    order, algorithm = int(run.opt("solver_order", 2)), run.opt("algorithm_type", "dpmsolver++")
    lower_order_final, euler_at_final = bool(run.opt("lower_order_final", True)), bool(run.opt("euler_at_final", False))
    if order == 3 and algorithm == "sde-dpmsolver++":
        run.quirk(
            "solver_order=3 with algorithm_type='sde-dpmsolver++' weights D2 by "
            "alpha_t((1 - e^{-2h} - 2h)/(2h)^2 - 1/2); the SDE's exponential integrator (and k-diffusion's "
            "sample_dpmpp_3m_sde) has + 1/2. The -alpha_t D2 difference makes it a first-order solver. "
            "Reproduced with DiffusersSDEDPMSolver3M."
        )
        sampler = DiffusersSDEDPMSolver3M(lower_order_final, euler_at_final)
    else:
        sampler = DPMSolverMultistep(
            solver_order=order,
            algorithm=algorithm,
            solver_type=run.opt("solver_type", "midpoint"),
            lower_order_final=lower_order_final,
            euler_at_final=euler_at_final,
        )
    if run.opt("variance_type") in ("learned", "learned_range"):
        run.note("variance_type='learned*' only drops the network's variance channels: irrelevant here.")
    sched = run.copy()
    levels = _run_levels(sched)
    nfe = len(sched.timesteps)
    if run.opt("use_flow_sigmas"):
        return _flow_run(run, sched, levels, sampler, shift=float(run.opt("flow_shift", 1.0)), nfe=nfe)
    return _sigma_run(run, sched, levels, sampler, state="vp", nfe=nfe)


@register_handler("DPMSolverSinglestepScheduler")
def _dpm_singlestep(run: Run, opts: dict):
    sched = run.copy()
    config = dict(sched.config)  # set_timesteps may switch lower_order_final on (uneven N, or a final sigma 0)
    if bool(config.get("lower_order_final", True)) != bool(run.opt("lower_order_final", True)):
        run.note("set_timesteps switched lower_order_final on (N not a multiple of solver_order, or final sigma 0).")
    order, algorithm = int(config.get("solver_order", 2)), config.get("algorithm_type", "dpmsolver++")
    if order == 3 and algorithm == "sde-dpmsolver++":
        run.quirk("its third-order SDE step has the same D2 weight as the multistep one (- 1/2 for + 1/2): reproduced.")
    sampler = DPMSolverSinglestep(
        solver_order=order,
        algorithm=algorithm,
        solver_type=config.get("solver_type", "midpoint"),
        lower_order_final=bool(config.get("lower_order_final", True)),
        sde_third_order="diffusers",
    )
    levels = _run_levels(sched)
    nfe = len(sched.timesteps)
    if config.get("use_flow_sigmas"):
        return _flow_run(run, sched, levels, sampler, shift=float(config.get("flow_shift", 1.0)), nfe=nfe)
    return _sigma_run(run, sched, levels, sampler, state="vp", nfe=nfe)


# --- flow matching and EDM -------------------------------------------------------------------------


def _flow_run(run: Run, sched, levels: np.ndarray, sampler, *, shift: float, nfe: int):
    """Counterpart of a run along flow levels $s$ (state: $(1 - s)x_0 + s\\varepsilon$) on `RectifiedFlow(shift)`."""
    _check_first_timestep(run, sched)
    levels, sampler = _drop_identity_end(run, levels, sampler)
    schedule = RectifiedFlow(shift)
    ts = times_on_flow(schedule, levels)
    init = init_of(init_noise_sigma(sched), flow_scale(levels[0]))
    if levels[-1] > 0:
        run.note(f"the run ends at flow sigma = {levels[-1]:.6g} > 0, not at the clean sample.")
    return counterpart(run, schedule, sampler, ts, init, nfe=nfe, output_scale=flow_scale(levels[-1]))


def _flow_shift_quirk(run: Run) -> float:
    shift = float(run.opt("shift", 1.0))
    if shift != 1.0 and not run.opt("use_karras_sigmas") and not run.opt("use_exponential_sigmas") and not run.opt(
        "use_beta_sigmas"
    ):
        run.quirk(
            f"set_timesteps spaces the levels between the already shifted training sigmas and shifts them again: the "
            f"last evaluated sigma is shift(shift(1/T)) (shift = {shift}), not shift(1/T); the levels are "
            "shift(linspace(1, shift(1/T), N)). Reproduced as read from the scheduler."
        )
    if run.opt("shift_terminal"):
        run.note(f"shift_terminal={run.opt('shift_terminal')}: stretched levels, read from the scheduler.")
    return shift


@register_handler("FlowMatchEulerDiscreteScheduler")
def _flow_euler(run: Run, opts: dict):
    shift = _flow_shift_quirk(run)
    sched = run.copy()
    sampler = FlowMatchEuler(stochastic_sampling=True) if run.opt("stochastic_sampling") else DDIM()
    return _flow_run(run, sched, _run_levels(sched), sampler, shift=shift, nfe=len(sched.timesteps))


@register_handler("FlowMatchHeunDiscreteScheduler")
def _flow_heun(run: Run, opts: dict):
    shift = _flow_shift_quirk(run)
    sched = run.copy()
    return _flow_run(run, sched, _two_stage_levels(sched), FlowMatchHeun(), shift=shift, nfe=len(sched.timesteps))


@register_handler("EDMEulerScheduler")
def _edm_euler(run: Run, opts: dict):
    sched = run.copy()
    sampler = _churn(run, opts, float(run.opt("sigma_data", 0.5))) or DDIM()
    levels, sampler = _drop_identity_end(run, _run_levels(sched), sampler)
    schedule, ts = levels_discrete(levels)
    run.note("EDMEulerScheduler has no training table: the schedule is a Discrete table of the run's own levels.")
    init = init_of(init_noise_sigma(sched), ve_scale(levels[0]))
    if levels[-1] > 0:
        run.note(f"the run ends at sigma = {levels[-1]:.6g} > 0, not at the clean sample.")
    return counterpart(run, schedule, sampler, ts, init, nfe=len(sched.timesteps), output_scale=ve_scale(levels[-1]))


# --- the multistep zoo: UniPC, DEIS, LMS, PNDM, iPNDM ---------------------------------------------


@register_handler("UniPCMultistepScheduler")
def _unipc(run: Run, opts: dict):
    if getattr(run.original, "solver_p", None) is not None:
        run.refuse("has solver_p set (another scheduler as predictor, solver_p + UniC): not supported.")
    sampler = UniPC(
        solver_order=int(run.opt("solver_order", 2)),
        solver_type=run.opt("solver_type", "bh2"),
        lower_order_final=bool(run.opt("lower_order_final", True)),
        disable_corrector=tuple(run.opt("disable_corrector", ()) or ()),
        predict_x0=bool(run.opt("predict_x0", True)),
    )
    sched = run.copy()
    levels = _run_levels(sched)
    nfe = len(sched.timesteps)
    high_order_end = not sampler.lower_order_final and sampler.solver_order > 1
    if levels[-1] == 0 and (sampler.solver_type == "bh1" or not sampler.predict_x0 or high_order_end):
        run.refuse(
            "with final_sigmas_type='zero' and solver_type='bh1', predict_x0=False or lower_order_final=False returns "
            "NaN samples in diffusers 0.42: its last step onto sigma = 0 has h = inf, and B(h) = -h (bh1), "
            "sigma_t (e^h - 1) (noise prediction) or the divided differences (order > 1) multiply it by 0. Use "
            "final_sigmas_type='sigma_min'."
        )
    if levels.shape[0] > 2 and levels[-1] == levels[-2] and (run.n - 2) not in sampler.disable_corrector:
        run.refuse(
            "ends with a step between equal noise levels (final_sigmas_type='sigma_min' after a grid that already ends "
            "at sigma_min): that step is UniC's corrector alone (h = 0), which a grid of distinct levels cannot "
            "express. Use final_sigmas_type='zero', or a spacing that does not end at sigma_min."
        )
    if run.opt("use_flow_sigmas"):
        if levels[0] < 1.0 and abs(levels[0] - 1.0) <= 2e-6:
            run.note("use_flow_sigmas: diffusers lowers a first level of 1 by 1e-6 (an infinite log-SNR otherwise).")
        return _flow_run(run, sched, levels, sampler, shift=float(run.opt("flow_shift", 1.0)), nfe=nfe)
    return _sigma_run(run, sched, levels, sampler, state="vp", nfe=nfe)


@register_handler("DEISMultistepScheduler")
def _deis(run: Run, opts: dict):
    sampler = DEIS(
        solver_order=int(run.opt("solver_order", 2)), lower_order_final=bool(run.opt("lower_order_final", True))
    )
    sched = run.copy()
    levels = _run_levels(sched)
    run.note("DEISMultistepScheduler ends at training index 0 (or repeats its last sigma), not at sigma = 0.")
    nfe = len(sched.timesteps)
    if run.opt("use_flow_sigmas"):
        return _flow_run(run, sched, levels, sampler, shift=float(run.opt("flow_shift", 1.0)), nfe=nfe)
    return _sigma_run(run, sched, levels, sampler, state="vp", nfe=nfe)


@register_handler("LMSDiscreteScheduler")
def _lms(run: Run, opts: dict):
    sched = run.copy()
    run.note("LMS of order 4 (step()'s default); its scipy quadratures of Lagrange polynomials are exact integrals.")
    return _sigma_run(run, sched, _run_levels(sched), LMS(4), state="ve", nfe=len(sched.timesteps))


@register_handler("PNDMScheduler")
def _pndm(run: Run, opts: dict):
    if run.opt("prediction_type", "epsilon") != "epsilon":
        run.refuse(
            f"with prediction_type={run.opt('prediction_type')!r} combines the raw network outputs of several steps "
            "(its Adams-Bashforth / Runge-Kutta sums) and converts the sum to a noise prediction with the current "
            "level's alpha, sigma and sample: not PLMS on the noise prediction, and the result depends on the "
            "parameterization. Only prediction_type='epsilon' has a counterpart."
        )
    sched = run.copy()
    T = int(run.opt("num_train_timesteps", 1000))
    ratio = T // run.n
    idx = np.sort(np.unique(as_float64(sched._timesteps).astype(np.int64)))[::-1]
    land = idx - ratio
    if not (np.array_equal(land[:-1], idx[1:]) and land[-1] < 0):
        run.refuse(
            f"with timestep_spacing={run.opt('timestep_spacing')!r} and {run.n} steps steps from t to t - "
            f"num_train_timesteps // num_inference_steps = t - {ratio}, which misses its next timestep "
            f"({idx[:3].tolist()} ...), and its warm-up then restarts from t_1 + {ratio} instead of t_0: the levels "
            "it mixes have no counterpart. Use timestep_spacing='leading' (its default)."
        )
    schedule = vp_table(run, sched)
    clean = bool(run.opt("set_alpha_to_one", False))
    final = 0.0 if clean else 1.0 / T
    ts = np.concatenate([(idx + 1.0) / T, [final]])
    skip_prk = bool(run.opt("skip_prk_steps", False))
    sampler = PNDM(skip_prk_steps=skip_prk, prk_midpoint=(ratio // 2) / ratio if ratio > 1 else 0.5)
    if not skip_prk and ratio < 2:
        run.refuse("with skip_prk_steps=False needs num_train_timesteps // num_inference_steps >= 2 (RK midpoints).")
    if ts[-2] == ts[-1]:
        run.note(_IDENTITY_AT_0)
        ts, sampler = ts[:-1], Truncated(sampler, 1)
    if not clean:
        run.note("set_alpha_to_one=False: the run ends at training index 0 (alpha_bar_0 < 1), not at the clean sample.")
    return counterpart(run, schedule, sampler, ts, "standard", nfe=len(sched.timesteps))


@register_handler("IPNDMScheduler")
def _ipndm(run: Run, opts: dict):
    if run.opt("trained_betas") is not None:
        run.refuse("has trained_betas: its noise levels are then a user table without a counterpart.")
    sched = run.copy()
    sigma = as_float64(sched.betas)  # IPNDM's "betas" are the VP noise scales sin^2(pi s / 2)
    alpha = np.sqrt(1.0 - sigma**2)
    ts = np.arctan2(sigma, alpha) * 2.0 / np.pi  # Cosine(s=0): abar(t) = cos^2(pi t / 2)
    run.note(
        "IPNDMScheduler's levels (VP sigma = sin^2(pi s/2), alpha = sqrt(1 - sigma^2)) are Cosine(s=0) at "
        "t = (2/pi) atan2(sigma, alpha); its model is a v-prediction network (any exact model is the same)."
    )
    return counterpart(run, Cosine(0.0), IPNDM(), ts, "standard", nfe=len(sched.timesteps))


