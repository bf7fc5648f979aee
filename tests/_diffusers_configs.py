"""Every diffusers scheduler configuration the parity test covers, and the ones `from_diffusers_scheduler` refuses.

A `Config` is either tested (the law of diffusers' own loop equals the counterpart's) or refused (with the reason
the error must give). `CLASSES` lists the scheduler classes issue 12 asks for; the test checks that each has entries.
"""

from __future__ import annotations

from typing import Any, NamedTuple

CLASSES = (
    "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler", "IPNDMScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "EDMEulerScheduler",
    "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
)

TABLES = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}
STEPS = (5, 10, 25)


class Config(NamedTuple):
    cls: str
    name: str
    kwargs: dict[str, Any]
    step_kwargs: dict[str, Any] | None = None
    tables: tuple[str | None, ...] = ("linear", "scaled_linear")
    refused: str | None = None  # regex the ValueError must match; None = tested
    quirk: str | None = None  # regex of the DiffusersQuirkWarning it must emit

    @property
    def id(self) -> str:
        return f"{self.cls.removesuffix('Scheduler')}:{self.name}"

    @property
    def stochastic(self) -> bool:
        kw, step = self.kwargs, self.step_kwargs or {}
        return (
            self.cls in ("DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
            or float(step.get("eta", 0.0)) > 0
            or str(kw.get("algorithm_type", "")).startswith("sde")
            or bool(kw.get("stochastic_sampling"))
            or float(step.get("s_churn", 0.0)) > 0
        )


def _c(cls, name, refused=None, quirk=None, step=None, tables=("linear", "scaled_linear"), **kwargs):
    return Config(cls, name, kwargs, step, tables, refused, quirk)


NOCLIP = {"clip_sample": False}
ZERO_SNR_V = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
FLOW = (None,)
PENDING = "no counterpart yet"

CONFIGS: list[Config] = [
    # --- DDIM (clip_sample=True is its default: refused, so every tested config turns it off) ---------------
    _c("DDIMScheduler", "leading", **NOCLIP),
    _c("DDIMScheduler", "leading-offset1-alpha0", **NOCLIP, steps_offset=1, set_alpha_to_one=False),
    _c("DDIMScheduler", "trailing", **NOCLIP, timestep_spacing="trailing"),
    _c("DDIMScheduler", "linspace", quirk="not the next timestep", **NOCLIP, timestep_spacing="linspace"),
    _c("DDIMScheduler", "leading-eta1", step={"eta": 1.0}, **NOCLIP),
    _c("DDIMScheduler", "linspace-eta0.5", quirk="not the next", step={"eta": 0.5}, **NOCLIP, timestep_spacing="linspace"),
    _c("DDIMScheduler", "trailing-zero-snr-v", **NOCLIP, **ZERO_SNR_V),
    _c("DDIMScheduler", "leading-sample", **NOCLIP, prediction_type="sample"),
    _c("DDIMScheduler", "trailing-zero-snr-eps", refused="NaN", **NOCLIP, rescale_betas_zero_snr=True,
       timestep_spacing="trailing"),
    _c("DDIMScheduler", "cosine-trailing", tables=("cosine",), **NOCLIP, timestep_spacing="trailing"),
    _c("DDIMScheduler", "clip", refused="clip_sample/thresholding", clip_sample=True),
    _c("DDIMScheduler", "thresholding", refused="clip_sample/thresholding", **NOCLIP, thresholding=True),
    # --- DDPM --------------------------------------------------------------------------------------------------
    _c("DDPMScheduler", "fixed_small-leading", **NOCLIP),
    _c("DDPMScheduler", "fixed_small-trailing", **NOCLIP, timestep_spacing="trailing"),
    _c("DDPMScheduler", "fixed_small-linspace", **NOCLIP, timestep_spacing="linspace"),
    _c("DDPMScheduler", "fixed_small_log", **NOCLIP, variance_type="fixed_small_log"),
    _c("DDPMScheduler", "fixed_small-v", **NOCLIP, prediction_type="v_prediction", timestep_spacing="trailing"),
    _c("DDPMScheduler", "zero-snr-v", **NOCLIP, **ZERO_SNR_V),
    _c("DDPMScheduler", "fixed_large-trailing", **NOCLIP, variance_type="fixed_large", timestep_spacing="trailing"),
    _c("DDPMScheduler", "fixed_large-leading", **NOCLIP, variance_type="fixed_large"),
    _c("DDPMScheduler", "fixed_large-linspace", **NOCLIP, variance_type="fixed_large", timestep_spacing="linspace"),
    _c("DDPMScheduler", "fixed_large_log", refused="NaN", **NOCLIP, variance_type="fixed_large_log"),
    _c("DDPMScheduler", "learned_range", refused="network's output", **NOCLIP, variance_type="learned_range"),
    # --- Euler ---------------------------------------------------------------------------------------------------
    _c("EulerDiscreteScheduler", "linspace"),
    _c("EulerDiscreteScheduler", "leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("EulerDiscreteScheduler", "trailing", timestep_spacing="trailing"),
    _c("EulerDiscreteScheduler", "karras", use_karras_sigmas=True),
    _c("EulerDiscreteScheduler", "karras-leading", use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1),
    _c("EulerDiscreteScheduler", "exponential", use_exponential_sigmas=True),
    _c("EulerDiscreteScheduler", "beta", use_beta_sigmas=True),
    _c("EulerDiscreteScheduler", "sigma_min", final_sigmas_type="sigma_min"),
    _c("EulerDiscreteScheduler", "log_linear", quirk="log_linear", interpolation_type="log_linear"),
    _c("EulerDiscreteScheduler", "trailing-zero-snr-v", **ZERO_SNR_V),
    _c("EulerDiscreteScheduler", "cosine-linspace", tables=("cosine",)),
    # --- Euler ancestral -----------------------------------------------------------------------------------------
    _c("EulerAncestralDiscreteScheduler", "linspace"),
    _c("EulerAncestralDiscreteScheduler", "leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("EulerAncestralDiscreteScheduler", "trailing", timestep_spacing="trailing"),
    _c("EulerAncestralDiscreteScheduler", "trailing-zero-snr-v", **ZERO_SNR_V),
    # --- Heun ----------------------------------------------------------------------------------------------------
    _c("HeunDiscreteScheduler", "linspace"),
    _c("HeunDiscreteScheduler", "leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("HeunDiscreteScheduler", "trailing", timestep_spacing="trailing"),
    _c("HeunDiscreteScheduler", "karras", use_karras_sigmas=True),
    _c("HeunDiscreteScheduler", "exponential", use_exponential_sigmas=True),
    _c("HeunDiscreteScheduler", "v_prediction", prediction_type="v_prediction"),
    # --- DPM-Solver multistep ------------------------------------------------------------------------------------
    _c("DPMSolverMultistepScheduler", "2m"),
    _c("DPMSolverMultistepScheduler", "2m-heun", solver_type="heun"),
    _c("DPMSolverMultistepScheduler", "1", solver_order=1),
    _c("DPMSolverMultistepScheduler", "3m", solver_order=3),
    _c("DPMSolverMultistepScheduler", "2m-karras", use_karras_sigmas=True),
    _c("DPMSolverMultistepScheduler", "2m-leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("DPMSolverMultistepScheduler", "2m-trailing", timestep_spacing="trailing"),
    _c("DPMSolverMultistepScheduler", "2m-euler_at_final", euler_at_final=True),
    _c("DPMSolverMultistepScheduler", "2m-no-lower_order_final", lower_order_final=False),
    _c("DPMSolverMultistepScheduler", "3m-no-lower_order_final", solver_order=3, lower_order_final=False),
    _c("DPMSolverMultistepScheduler", "2m-sigma_min", final_sigmas_type="sigma_min"),
    _c("DPMSolverMultistepScheduler", "2m-karras-sigma_min", use_karras_sigmas=True, final_sigmas_type="sigma_min"),
    _c("DPMSolverMultistepScheduler", "2m-exponential", use_exponential_sigmas=True),
    _c("DPMSolverMultistepScheduler", "2m-beta", use_beta_sigmas=True),
    _c("DPMSolverMultistepScheduler", "2m-lu", use_lu_lambdas=True),
    _c("DPMSolverMultistepScheduler", "2m-zero-snr-v", **ZERO_SNR_V),
    _c("DPMSolverMultistepScheduler", "2m-v", prediction_type="v_prediction"),
    _c("DPMSolverMultistepScheduler", "2m-flow", use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"),
    _c("DPMSolverMultistepScheduler", "2m-sde", algorithm_type="sde-dpmsolver++"),
    _c("DPMSolverMultistepScheduler", "2m-sde-heun", algorithm_type="sde-dpmsolver++", solver_type="heun"),
    _c("DPMSolverMultistepScheduler", "2m-sde-karras", algorithm_type="sde-dpmsolver++", use_karras_sigmas=True),
    _c("DPMSolverMultistepScheduler", "3m-sde", quirk="1/2", algorithm_type="sde-dpmsolver++", solver_order=3),
    _c("DPMSolverMultistepScheduler", "dpmsolver-2", algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
    _c("DPMSolverMultistepScheduler", "dpmsolver-3", algorithm_type="dpmsolver", solver_order=3,
       final_sigmas_type="sigma_min"),
    _c("DPMSolverMultistepScheduler", "sde-dpmsolver-2", algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"),
    _c("DPMSolverMultistepScheduler", "2m-cosine", tables=("cosine",)),
    _c("DPMSolverMultistepScheduler", "2m-cosine-clipped", tables=("cosine",), lambda_min_clipped=-5.1),
    _c("DPMSolverMultistepScheduler", "2m-cosine-karras", refused="repeated first timestep", tables=("cosine",),
       use_karras_sigmas=True),
    _c("DPMSolverMultistepScheduler", "thresholding", refused="clip_sample/thresholding", thresholding=True),
    _c("DPMSolverMultistepScheduler", "dynamic-shifting", refused="use_dynamic_shifting", use_dynamic_shifting=True,
       use_flow_sigmas=True),
    # --- EDM Euler -----------------------------------------------------------------------------------------------
    _c("EDMEulerScheduler", "karras", tables=FLOW),
    _c("EDMEulerScheduler", "exponential", tables=FLOW, sigma_schedule="exponential"),
    _c("EDMEulerScheduler", "sigma_min", tables=FLOW, final_sigmas_type="sigma_min"),
    _c("EDMEulerScheduler", "v_prediction", tables=FLOW, prediction_type="v_prediction"),
    # --- FlowMatch Euler -----------------------------------------------------------------------------------------
    _c("FlowMatchEulerDiscreteScheduler", "shift1", tables=FLOW, shift=1.0),
    _c("FlowMatchEulerDiscreteScheduler", "shift3", quirk="shift", tables=FLOW, shift=3.0),
    _c("FlowMatchEulerDiscreteScheduler", "shift3-karras", tables=FLOW, shift=3.0, use_karras_sigmas=True),
    _c("FlowMatchEulerDiscreteScheduler", "shift3-exponential", tables=FLOW, shift=3.0, use_exponential_sigmas=True),
    _c("FlowMatchEulerDiscreteScheduler", "shift3-terminal", tables=FLOW, shift=3.0, shift_terminal=0.05),
    _c("FlowMatchEulerDiscreteScheduler", "dynamic", refused="use_dynamic_shifting", tables=FLOW,
       use_dynamic_shifting=True),
    _c("FlowMatchEulerDiscreteScheduler", "stochastic-shift1", tables=FLOW, shift=1.0, stochastic_sampling=True),
    _c("FlowMatchEulerDiscreteScheduler", "stochastic-shift3", tables=FLOW, shift=3.0, stochastic_sampling=True),
    # --- FlowMatch Heun ------------------------------------------------------------------------------------------
    _c("FlowMatchHeunDiscreteScheduler", "shift1", tables=FLOW, shift=1.0),
    _c("FlowMatchHeunDiscreteScheduler", "shift3", quirk="shift", tables=FLOW, shift=3.0),
    # --- KDPM2 (+ ancestral) -------------------------------------------------------------------------------------
    _c("KDPM2DiscreteScheduler", "linspace"),
    _c("KDPM2DiscreteScheduler", "leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("KDPM2DiscreteScheduler", "trailing", timestep_spacing="trailing"),
    _c("KDPM2DiscreteScheduler", "karras", use_karras_sigmas=True),
    _c("KDPM2DiscreteScheduler", "v_prediction", prediction_type="v_prediction"),
    _c("KDPM2AncestralDiscreteScheduler", "linspace"),
    _c("KDPM2AncestralDiscreteScheduler", "leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("KDPM2AncestralDiscreteScheduler", "trailing", timestep_spacing="trailing"),
    _c("KDPM2AncestralDiscreteScheduler", "karras", use_karras_sigmas=True),
    # --- DPM-Solver singlestep -----------------------------------------------------------------------------------
    _c("DPMSolverSinglestepScheduler", "2s"),
    _c("DPMSolverSinglestepScheduler", "1s", solver_order=1),
    _c("DPMSolverSinglestepScheduler", "3s", solver_order=3),
    _c("DPMSolverSinglestepScheduler", "2s-heun", solver_type="heun"),
    _c("DPMSolverSinglestepScheduler", "2s-no-lower_order_final", lower_order_final=False, final_sigmas_type="sigma_min"),
    _c("DPMSolverSinglestepScheduler", "3s-sigma_min", solver_order=3, final_sigmas_type="sigma_min"),
    _c("DPMSolverSinglestepScheduler", "2s-karras", use_karras_sigmas=True),
    _c("DPMSolverSinglestepScheduler", "2s-dpmsolver", algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
    _c("DPMSolverSinglestepScheduler", "2s-sde", algorithm_type="sde-dpmsolver++"),
    _c("DPMSolverSinglestepScheduler", "3s-sde", quirk="D2", algorithm_type="sde-dpmsolver++", solver_order=3),
    _c("DPMSolverSinglestepScheduler", "2s-flow", use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"),
    # --- churn (step arguments of the Euler schedulers) --------------------------------------------------------------
    _c("EulerDiscreteScheduler", "churn", quirk="before step", step={"s_churn": 2.0}),
    _c("EulerDiscreteScheduler", "churn-window", quirk="before step", step={"s_churn": 5.0, "s_tmin": 0.5, "s_tmax": 8.0}),
    _c("EDMEulerScheduler", "churn", quirk="before step", tables=FLOW, step={"s_churn": 2.0}),
    _c("EulerDiscreteScheduler", "churn-v", refused="s_churn", step={"s_churn": 2.0}, prediction_type="v_prediction"),
    # --- LMS --------------------------------------------------------------------------------------------------------
    _c("LMSDiscreteScheduler", "linspace"),
    _c("LMSDiscreteScheduler", "leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("LMSDiscreteScheduler", "trailing", timestep_spacing="trailing"),
    _c("LMSDiscreteScheduler", "karras", use_karras_sigmas=True),
    _c("LMSDiscreteScheduler", "v_prediction", prediction_type="v_prediction"),
    # --- PNDM / PLMS ------------------------------------------------------------------------------------------------
    _c("PNDMScheduler", "plms-sd", skip_prk_steps=True, steps_offset=1),
    _c("PNDMScheduler", "plms-alpha1", skip_prk_steps=True, set_alpha_to_one=True),
    _c("PNDMScheduler", "prk", skip_prk_steps=False),
    _c("PNDMScheduler", "prk-offset1-alpha1", skip_prk_steps=False, steps_offset=1, set_alpha_to_one=True),
    _c("PNDMScheduler", "plms-v", refused="parameterization", skip_prk_steps=True, prediction_type="v_prediction"),
    _c("PNDMScheduler", "plms-linspace", refused="misses its next timestep", skip_prk_steps=True,
       timestep_spacing="linspace"),
    # --- iPNDM --------------------------------------------------------------------------------------------------------
    _c("IPNDMScheduler", "default", tables=FLOW),
    # --- UniPC ----------------------------------------------------------------------------------------------------
    _c("UniPCMultistepScheduler", "bh2"),
    _c("UniPCMultistepScheduler", "bh1", refused="NaN", solver_type="bh1"),
    _c("UniPCMultistepScheduler", "bh1-sigma_min", solver_type="bh1", final_sigmas_type="sigma_min"),
    _c("UniPCMultistepScheduler", "bh2-order1", solver_order=1),
    _c("UniPCMultistepScheduler", "bh2-order3", solver_order=3),
    _c("UniPCMultistepScheduler", "bh1-order3-sigma_min", solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min"),
    _c("UniPCMultistepScheduler", "bh2-no-lower_order_final", refused="NaN", lower_order_final=False),
    _c("UniPCMultistepScheduler", "bh2-no-lower_order_final-sigma_min", lower_order_final=False,
       final_sigmas_type="sigma_min"),
    _c("UniPCMultistepScheduler", "bh2-order1-no-lower_order_final", solver_order=1, lower_order_final=False),
    _c("UniPCMultistepScheduler", "bh2-noise-prediction", refused="NaN", predict_x0=False),
    _c("UniPCMultistepScheduler", "bh2-noise-prediction-sigma_min", predict_x0=False, final_sigmas_type="sigma_min"),
    _c("UniPCMultistepScheduler", "bh2-disable-corrector", disable_corrector=[0, 2]),
    _c("UniPCMultistepScheduler", "bh2-karras", use_karras_sigmas=True),
    _c("UniPCMultistepScheduler", "bh2-karras-sigma_min", refused="corrector alone", use_karras_sigmas=True,
       final_sigmas_type="sigma_min"),
    _c("UniPCMultistepScheduler", "bh2-exponential", use_exponential_sigmas=True),
    _c("UniPCMultistepScheduler", "bh2-leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("UniPCMultistepScheduler", "bh2-trailing", timestep_spacing="trailing"),
    _c("UniPCMultistepScheduler", "bh2-sigma_min", final_sigmas_type="sigma_min"),
    _c("UniPCMultistepScheduler", "bh2-v", prediction_type="v_prediction"),
    _c("UniPCMultistepScheduler", "bh2-flow", use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"),
    # --- DEIS -----------------------------------------------------------------------------------------------------
    _c("DEISMultistepScheduler", "2"),
    _c("DEISMultistepScheduler", "1", solver_order=1),
    _c("DEISMultistepScheduler", "3", solver_order=3),
    _c("DEISMultistepScheduler", "2-no-lower_order_final", lower_order_final=False),
    _c("DEISMultistepScheduler", "3-karras", solver_order=3, use_karras_sigmas=True),
    _c("DEISMultistepScheduler", "2-exponential", use_exponential_sigmas=True),
    _c("DEISMultistepScheduler", "2-leading-offset1", timestep_spacing="leading", steps_offset=1),
    _c("DEISMultistepScheduler", "2-trailing", timestep_spacing="trailing"),
    _c("DEISMultistepScheduler", "2-v", prediction_type="v_prediction"),
]
