"""The README's pretrained-model tables: time steps for a model trained on diffusers' `linear` table, CIFAR-10 spectrum.

Table 1 (DDIM): W2 to the data of every `gdj.grids` spacing at NFE 5, 10, 20, 50 and of `gdj.select_timesteps`'
closed-form recommendation (integer steps, first step free), with KL(data || output) beside each for reference
(eigenvalues floored at the 8-bit dequantization noise so that the KL is finite).
Table 2: the same recommendation for the samplers users run (DDIM, DPM-Solver++ 2M, UniPC, Euler ancestral ...):
best fixed spacing vs the recommendation, W2.

    PYTHONPATH=. python benchmarks/pretrained_table.py            # prints both Markdown tables (~10 min CPU)
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gaussdiff_jax as gdj  # noqa: E402

FLOOR = (2 / 255) ** 2 / 12  # dequantization noise of 8-bit pixels in [-1, 1]


def _scores(source, schedule, sampler, ts):
    law = gdj.sample_law(source, schedule, sampler, jnp.asarray(ts))
    return float(gdj.w2(source, law)), float(gdj.kl(source, law))


def ddim_table(source, schedule, nfes) -> str:
    rows: dict[str, list[str]] = {}
    for nfe in nfes:
        result = gdj.select_timesteps(schedule, gdj.DDIM(), nfe, source=source)
        for cand in result.candidates:
            name = "**recommended** (`select_timesteps`)" if cand.name in ("closed-form", "selected") else cand.name
            if name in rows and len(rows[name]) > nfes.index(nfe):
                continue
            ts = np.concatenate([(cand.timesteps + 1.0) / schedule.num_train_timesteps, [0.0]])
            w2, kl = _scores(source, schedule, gdj.DDIM(), ts)
            rows.setdefault(name, []).append(f"{w2:.4g} / {kl:.3g}")
    head = "| grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|" + "---:|" * len(nfes)
    order = sorted(rows, key=lambda k: (not k.startswith("**"), k))
    return head + "\n" + "\n".join(f"| {k} | " + " | ".join(rows[k]) + " |" for k in order)


def sampler_table(source, schedule, samplers, nfes) -> str:
    lines = ["| sampler | " + " | ".join(f"NFE {n}: best spacing → recommended" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]  # fmt: skip
    for label, sampler in samplers.items():
        cells = []
        for nfe in nfes:
            result = gdj.select_timesteps(schedule, sampler, nfe, source=source)
            fixed = [c for c in result.candidates if c.name not in ("closed-form", "selected")]
            best = min(fixed, key=lambda c: c.predicted)
            cells.append(f"{best.w2:.4g} ({best.name}) → **{result.predicted:.4g}**")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", default="5,10,20,50")
    parser.add_argument("--sampler-nfe", default="5,10,20")
    args = parser.parse_args()
    source = gdj.GaussianSource(np.maximum(gdj.spectra.load("cifar10"), FLOOR))
    schedule = gdj.Discrete.from_diffusers("linear")
    start = time.perf_counter()
    print(ddim_table(source, schedule, [int(n) for n in args.nfe.split(",")]))
    print()
    samplers = {"DDIM": gdj.DDIM(), "DPM-Solver++ 2M": gdj.DPMSolverMultistep(2)}
    for label, name in (("UniPC (bh2, order 2)", "unipc"), ("Euler ancestral", "euler-ancestral")):
        if name in gdj.samplers.available():
            samplers[label] = gdj.samplers.make(name)
    print(sampler_table(source, schedule, samplers, [int(n) for n in args.sampler_nfe.split(",")]))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
