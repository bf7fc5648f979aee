r"""Small MLP denoisers with a sinusoidal time embedding, and the heads that turn their output into $\hat x_0$.

**Frames.** Every model is called on the VP state $x = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,z$ at grid time
$t \in (0, 1]$ (a `Discrete` table's training index $i$ sits at $t = (i+1)/T$, MATH.md / `gdj.Discrete`), and
returns the prediction of its head:

| head | target | $\hat x_0$ from the output $o$ |
|---|---|---|
| `eps` | $z$ | $(x - \sqrt{1-\bar\alpha}\,o)/\sqrt{\bar\alpha}$ |
| `x0` | $x_0$ | $o$ |
| `v` | $\sqrt{\bar\alpha}\,z - \sqrt{1-\bar\alpha}\,x_0$ | $\sqrt{\bar\alpha}\,x - \sqrt{1-\bar\alpha}\,o$ |
| `flow` | $z - x_0$ (rectified flow, $x_f = (1-s)x_0 + s z$, $s = t$) | $x_f - s\,o$, $x_f = \sqrt{(1-s)^2+s^2}\;x$ |

The flow model sees its own frame $x_f$ (the VP state times `gdj.RectifiedFlow(1).scale(t)`); DDIM in the VP frame
is then exactly the flow Euler sampler (`gdj.RectifiedFlow`'s docstring).

**Architecture.** input Linear(d -> W), `depth` residual blocks `h += L2(silu(L1(LN(h)) + E_k(e)))` with
hidden width H, output Linear(W -> d) plus two skips from the input: a linear map Linear(d -> d) and a
per-pixel gain that depends on time, `gate(e) * x` (without them the W < d bottleneck cannot pass the state
through, and low-noise predictions are poor); the time embedding `e` (64 wide) is a 2-layer MLP of 32 sine / 32 cosine
features of $t$ (frequencies 1 .. 1000, geometric). float32 throughout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

HEADS = ("eps", "x0", "v", "flow")
WEIGHTS = Path(__file__).parent / "weights"
_F32 = jnp.float32
EMBED = 64


def time_features(t: jax.Array, count: int = 32) -> jax.Array:
    """Sinusoidal features of times `t` in [0, 1]: `(*shape, 2 count)`, frequencies 1..1000 (geometric)."""
    freqs = jnp.exp(jnp.linspace(0.0, math.log(1000.0), count, dtype=_F32))
    arg = jnp.asarray(t, dtype=_F32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    up: eqx.nn.Linear
    down: eqx.nn.Linear
    film: eqx.nn.Linear

    def __init__(self, width: int, hidden: int, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(width, dtype=_F32)
        self.up = eqx.nn.Linear(width, hidden, key=k1, dtype=_F32)
        self.down = eqx.nn.Linear(hidden, width, key=k2, dtype=_F32)
        self.film = eqx.nn.Linear(EMBED, hidden, key=k3, dtype=_F32)

    def __call__(self, h, e):
        y = jax.nn.silu(self.up(self.norm(h)) + self.film(e))
        return h + self.down(y)


class Denoiser(eqx.Module):
    """One network: `(d,)` state and scalar time in (0, 1] -> `(d,)` output of `head`."""

    head: str = eqx.field(static=True)
    embed1: eqx.nn.Linear
    embed2: eqx.nn.Linear
    inp: eqx.nn.Linear
    blocks: tuple[Block, ...]
    out: eqx.nn.Linear
    skip: eqx.nn.Linear
    gate: eqx.nn.Linear

    def __init__(self, dim: int, head: str, *, width: int = 192, hidden: int = 384, depth: int = 3, key):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {head!r}.")
        keys = jax.random.split(key, depth + 5)
        self.head = head
        self.embed1 = eqx.nn.Linear(64, EMBED, key=keys[0], dtype=_F32)
        self.embed2 = eqx.nn.Linear(EMBED, EMBED, key=keys[1], dtype=_F32)
        self.inp = eqx.nn.Linear(dim, width, key=keys[2], dtype=_F32)
        self.blocks = tuple(Block(width, hidden, k) for k in keys[3:-2])
        out = eqx.nn.Linear(width, dim, key=keys[-1], dtype=_F32)
        self.out = eqx.tree_at(lambda m: (m.weight, m.bias), out, (out.weight * 0.1, out.bias * 0.0))
        skip = eqx.nn.Linear(dim, dim, use_bias=False, key=keys[-2], dtype=_F32)
        self.skip = eqx.tree_at(lambda m: m.weight, skip, skip.weight * 0.0)
        gate = eqx.nn.Linear(EMBED, dim, key=keys[-2], dtype=_F32)
        self.gate = eqx.tree_at(lambda m: (m.weight, m.bias), gate, (gate.weight * 0.0, gate.bias * 0.0))

    def __call__(self, x, t):
        e = self.embed2(jax.nn.silu(self.embed1(time_features(t))))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h) + self.skip(x) + self.gate(e) * x


def flow_scale(t):
    r"""$\sqrt{(1-t)^2 + t^2}$: the flow state is this times the VP state (`gdj.RectifiedFlow(1).scale`)."""
    return jnp.sqrt((1 - t) ** 2 + t**2)


def x0_from_output(head: str, out, x, abar, t):
    r"""The head's $\hat x_0$ from its output `out` at VP state `x` (`(n, d)`), $\bar\alpha$ and time `t` (`(n,)` or scalars)."""
    abar = jnp.asarray(abar)[..., None] if jnp.ndim(abar) else abar
    t = jnp.asarray(t)[..., None] if jnp.ndim(t) else t
    if head == "eps":
        return (x - jnp.sqrt(1 - abar) * out) / jnp.sqrt(abar)
    if head == "x0":
        return out
    if head == "v":
        return jnp.sqrt(abar) * x - jnp.sqrt(1 - abar) * out
    if head == "flow":
        return flow_scale(t) * x - t * out
    raise ValueError(f"unknown head {head!r}.")


def network_input(head: str, x, t):
    """What the network sees: the VP state, or for `flow` the flow-frame state."""
    if head == "flow":
        t = jnp.asarray(t)[..., None] if jnp.ndim(t) else t
        return flow_scale(t) * x
    return x


def predict_x0(model: Denoiser, x, abar, t):
    r"""$\hat x_0$, `(n, d)`, from a batch of VP states `x` `(n, d)` at times `t` and $\bar\alpha$ (`(n,)` or scalars).

    Computed in float32 (the network's dtype); returns float32.
    """
    x = jnp.asarray(x, dtype=_F32)
    abar = jnp.asarray(abar, dtype=_F32)
    t = jnp.asarray(t, dtype=_F32)
    tb = jnp.broadcast_to(t, x.shape[:1])
    out = jax.vmap(model)(network_input(model.head, x, t), tb)
    return x0_from_output(model.head, out, x, abar, t)


# --- shipped weights -------------------------------------------------------------------------------


def name_of(dataset: str, head: str) -> str:
    return f"{dataset}_{head}"


def save(model: Denoiser, name: str, meta: dict, folder: Path = WEIGHTS):
    folder.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(folder / f"{name}.eqx", model)
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def load(name: str) -> tuple[Denoiser, dict]:
    """The shipped network `name` (e.g. `"rgb8_eps"`) and its training metadata."""
    meta_path = WEIGHTS / f"{name}.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"no weights for {name!r} in {WEIGHTS}: run `PYTHONPATH=. python -m benchmarks.real_models.train` first."
        )
    meta = json.loads(meta_path.read_text())
    skeleton = Denoiser(
        meta["dim"], meta["head"], width=meta["width"], hidden=meta["hidden"], depth=meta["depth"], key=jax.random.key(0)
    )
    return eqx.tree_deserialise_leaves(WEIGHTS / f"{name}.eqx", skeleton), meta


def available() -> list[str]:
    """Names of the shipped networks."""
    return sorted(p.stem for p in WEIGHTS.glob("*.eqx"))


def num_params(model: Denoiser) -> int:
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))))
