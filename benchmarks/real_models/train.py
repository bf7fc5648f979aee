r"""Train the shipped denoisers (seeded, deterministic on one machine): `python -m benchmarks.real_models.train`.

For each dataset (`data.DATASETS`) and head (`eps`, `x0`, `v`, and `flow` on rgb8): an MLP `models.Denoiser`
trained on the dequantized training patches (fresh dequantization noise each batch) with the plain
(unweighted) mean-squared loss of its head:

- `eps`, `x0`, `v`: diffusers' `linear` table (`gdj.Discrete.from_diffusers("linear")`, T = 1000), training index
  $i \sim U\{0, \dots, 999\}$, network time $t = (i+1)/T$;
- `flow`: rectified flow $x_f = (1-s)x_0 + s z$, $s \sim U(0, 1)$, target $z - x_0$ (`gdj.RectifiedFlow(1)`).

Adam (warm-up 200 steps, cosine decay from 1e-3 to 1e-5), batch 256, `STEPS` steps, an exponential moving average
of the weights (decay 0.999) is what is saved. Writes `weights/<dataset>_<head>.eqx` and `.json` (metadata: sizes,
seeds, final losses, wall time). About 1 min per network on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gaussdiff_jax as gdj

from . import data, models

STEPS = 8000
BATCH = 256
CHUNK = 250  # steps per jitted scan
EMA = 0.999
WIDTH, HIDDEN, DEPTH = 128, 256, 3
NETWORKS = [("rgb8", "eps"), ("rgb8", "x0"), ("rgb8", "v"), ("rgb8", "flow"), ("grey16", "eps"), ("grey16", "x0"), ("grey16", "v")]


def linear_table() -> np.ndarray:
    """diffusers' `linear` alphas_cumprod (T = 1000), float64."""
    return np.asarray(gdj.Discrete.from_diffusers("linear").alphas_cumprod, dtype=np.float64)


def training_pair(head: str, x0, z, u, table):
    """Noisy input, network time and regression target for a batch (`u` uniform in [0, 1) per example)."""
    if head == "flow":
        s = u[:, None]
        return (1 - s) * x0 + s * z, u, z - x0
    T = table.shape[0]
    i = jnp.minimum((u * T).astype(jnp.int32), T - 1)
    abar = table[i][:, None]
    x = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * z
    target = {"eps": z, "x0": x0, "v": jnp.sqrt(abar) * z - jnp.sqrt(1 - abar) * x0}[head]
    return x, (i + 1.0).astype(jnp.float32) / T, target


def make_step(head: str, optimizer, pixels, table):
    n = pixels.shape[0]

    def loss_fn(model, x, t, target):
        return jnp.mean((jax.vmap(model)(x, t) - target) ** 2)

    def one(carry, key):
        model, ema, state = carry
        k1, k2, k3, k4 = jax.random.split(key, 4)
        u8 = pixels[jax.random.randint(k1, (BATCH,), 0, n)]
        x0 = (u8.astype(jnp.float32) + jax.random.uniform(k2, u8.shape, jnp.float32)) / 128.0 - 1.0
        z = jax.random.normal(k3, x0.shape, jnp.float32)
        x, t, target = training_pair(head, x0, z, jax.random.uniform(k4, (BATCH,), jnp.float32), table)
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, t, target)
        updates, state = optimizer.update(grads, state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        ema = jax.tree_util.tree_map(lambda e, p: EMA * e + (1 - EMA) * p, ema, eqx.filter(model, eqx.is_array))
        return (model, ema, state), loss

    @eqx.filter_jit
    def chunk(model, ema, state, key):
        (model, ema, state), losses = jax.lax.scan(one, (model, ema, state), jax.random.split(key, CHUNK))
        return model, ema, state, losses

    return chunk


def train(dataset: str, head: str, *, seed: int = 0, steps: int = STEPS, verbose: bool = True):
    """Train one network; returns `(ema_model, metadata)`."""
    patches = data.load_patches(dataset)
    dim = patches.train.shape[1]
    key = jax.random.key(seed)
    model = models.Denoiser(dim, head, width=WIDTH, hidden=HIDDEN, depth=DEPTH, key=jax.random.fold_in(key, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 200, steps, 1e-5)
    optimizer = optax.adam(schedule)
    params = eqx.filter(model, eqx.is_array)
    state = optimizer.init(params)
    ema = params
    step = make_step(head, optimizer, jnp.asarray(patches.train), jnp.asarray(linear_table(), dtype=jnp.float32))
    start = time.perf_counter()
    history = []
    for c in range(steps // CHUNK):
        model, ema, state, losses = step(model, ema, state, jax.random.fold_in(key, c + 1))
        history.append(float(jnp.mean(losses)))
        if verbose and (c + 1) % 8 == 0:
            print(f"  {dataset}_{head}: step {(c + 1) * CHUNK}/{steps}, loss {history[-1]:.4f}", flush=True)
    wall = time.perf_counter() - start
    ema_model = eqx.combine(ema, eqx.filter(model, eqx.is_array, inverse=True))
    meta = {
        "dataset": dataset,
        "head": head,
        "dim": dim,
        "width": WIDTH,
        "hidden": HIDDEN,
        "depth": DEPTH,
        "params": models.num_params(ema_model),
        "steps": steps,
        "batch": BATCH,
        "seed": seed,
        "ema": EMA,
        "schedule": "RectifiedFlow(shift=1)" if head == "flow" else "Discrete.from_diffusers('linear')",
        "loss_last_chunks": history[-4:],
        "train_seconds": round(wall, 1),
        "n_train_patches": int(patches.train.shape[0]),
    }
    return ema_model, meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names, e.g. rgb8_eps,grey16_v (default: all)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", default=str(models.WEIGHTS), help="folder for the .eqx/.json files")
    args = parser.parse_args(argv)
    wanted = set(filter(None, args.only.split(",")))
    total = time.perf_counter()
    for dataset, head in NETWORKS:
        name = models.name_of(dataset, head)
        if wanted and name not in wanted:
            continue
        print(f"training {name} ({args.steps} steps)", flush=True)
        model, meta = train(dataset, head, steps=args.steps)
        models.save(model, name, meta, Path(args.out))
        print(f"  saved {name}: {meta['params']} parameters, {meta['train_seconds']} s", flush=True)
    print(f"total {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
