"""Run one sharded sweep in a fresh process (devices are fixed at JAX start-up, so tests spawn this).

Usage: python _sharding_worker.py OUT.json [PROCESS_ID NUM_PROCESSES PORT]

Set XLA_FLAGS=--xla_force_host_platform_device_count=K beforehand for K host devices per process.
Writes the unsharded and the sharded (spectra, modes) results of the same sweep as JSON.
"""

import json
import sys

import jax


def start():
    """Join the distributed run (before JAX touches any device) and enable float64."""
    if len(sys.argv) > 2:
        process_id, num_processes, port = (int(a) for a in sys.argv[2:5])
        jax.distributed.initialize(
            coordinator_address=f"localhost:{port}",
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=60,
        )
    jax.config.update("jax_enable_x64", True)


def case():
    """Spectra of three sizes (one with a mean, one compressed with weights), 3 samplers, 3 counts, 2 schedules."""
    import jax.numpy as jnp
    import numpy as np

    import gaussdiff_jax as gdj

    cifar = gdj.GaussianSource(jnp.asarray(gdj.spectra.load("cifar10_preprint2024")))
    steep = gdj.compress(gdj.GaussianSource.power_law(20_001, exponent=1.3)).source
    rng = np.random.default_rng(0)
    small = gdj.GaussianSource(rng.uniform(0.05, 4.0, 61), mean=rng.normal(size=61))
    samplers = [gdj.EulerMaruyama(), gdj.DDPM(), gdj.Heun()]
    schedules = [gdj.LinearBeta(beta_max=15.0), gdj.LinearBeta(beta_max=25.0)]
    return [cifar, steep, small], samplers, [4, 11, 30], schedules


def main():
    import numpy as np

    import gaussdiff_jax as gdj

    args = case()
    metrics = ("kl", "kl_reverse", "w2")
    out = {"devices": len(jax.devices()), "processes": jax.process_count()}
    out["unsharded"] = {m: np.asarray(getattr(gdj.sweep(*args, metrics=metrics), m)).tolist() for m in metrics}
    for axis in ("spectra", "modes"):
        res = gdj.sweep(*args, metrics=metrics, sharding=axis)
        out[axis] = {m: np.asarray(getattr(res, m)).tolist() for m in metrics}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    start()
    main()
