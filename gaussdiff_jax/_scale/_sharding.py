r"""Sharding a sweep over devices and processes (`jax.sharding`), for users who outgrow one device.

The computation is embarrassingly parallel along two axes, and either can be split over a 1-D mesh
of all devices (`jax.devices()`: every device of every process):

- `"spectra"`: each device evaluates whole spectra. No communication; results are the same numbers
  as on one device (padding spectra are copies of the last one, dropped afterwards).
- `"modes"`: each device holds a slice of every spectrum's modes (for a few huge spectra); the
  per-mode terms are summed per device, then across devices (an all-reduce inserted by XLA). Padding
  modes have weight 0. Results differ from one device only by summation order (~1e-16 relative).

The compiled function is the one `sweep` uses; only the inputs' placement changes (`place`), and XLA's
SPMD partitioner does the rest. This module only places and gathers arrays: it does not import the
sweep (which imports it). **Several processes** (`jax.distributed.initialize(...)` first, one call
per host, e.g. under SLURM or on localhost): every process calls `sweep` with the same arguments, each
builds only the shards its own devices hold (`jax.make_array_from_callback`), and every process gets
the full results back (`process_allgather`).
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._padding import pad_modes, pad_spectra

Axis = Literal["spectra", "modes"]
_MESH_AXIS = "devices"


class DeviceSharding(eqx.Module):
    """How `sweep` spreads its work: which axis to split, over which devices.

    **Arguments:**

    - `axis`: `"spectra"` (default; whole spectra per device) or `"modes"` (slices of every spectrum).
    - `devices`: the devices of the 1-D mesh; default all devices of all processes, `jax.devices()`.
    """

    axis: Axis = eqx.field(static=True, default="spectra")
    devices: tuple | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.axis not in ("spectra", "modes"):
            raise ValueError(f"DeviceSharding: axis must be 'spectra' or 'modes'; got {self.axis!r}.")
        if self.devices is not None and len(self.devices) == 0:
            raise ValueError("DeviceSharding: devices is empty; pass None for all devices.")

    def mesh(self) -> Mesh:
        """The 1-D device mesh (axis name `"devices"`)."""
        devices = jax.devices() if self.devices is None else list(self.devices)
        return Mesh(np.array(devices), (_MESH_AXIS,))


def as_device_sharding(sharding) -> DeviceSharding:
    if isinstance(sharding, DeviceSharding):
        return sharding
    if isinstance(sharding, str):
        return DeviceSharding(axis=sharding)
    raise ValueError(
        f"sweep: sharding must be None, 'spectra', 'modes' or a DeviceSharding; got {type(sharding).__name__}."
    )


def _place(x, sharding: NamedSharding):
    """A global array with `sharding`, each process building only its own devices' shards."""
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather(x: jax.Array) -> jax.Array:
    """The full value of a (possibly multi-process) global array, on every process."""
    if jax.process_count() > 1:
        return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x


def place(inputs, sharding) -> tuple:
    """`inputs` (a `SweepInputs`) placed over the device mesh of `sharding`, padded to fit it.

    **Returns:** `(placed, num_spectra)`: evaluate `placed` with the sweep's compiled function, then
    `gather` each result and keep its first `num_spectra` rows (the rest are padding).
    """
    spec = as_device_sharding(sharding)
    mesh = spec.mesh()
    n_dev = mesh.devices.size
    num_spectra = inputs.sources.eigenvalues.shape[0]
    if spec.axis == "spectra":
        source = pad_spectra(inputs.sources, multiple=n_dev)
        source_spec = PartitionSpec(_MESH_AXIS, None)
    else:
        source = pad_modes(inputs.sources, multiple=n_dev)
        source_spec = PartitionSpec(None, _MESH_AXIS)
    split, replicated = NamedSharding(mesh, source_spec), NamedSharding(mesh, PartitionSpec())
    source = jax.tree.map(lambda x: _place(x, split), source)
    rest = eqx.tree_at(lambda i: i.sources, inputs, None)
    rest = jax.tree.map(lambda x: _place(x, replicated) if eqx.is_array(x) else x, rest)
    placed = eqx.tree_at(lambda i: i.sources, rest, source, is_leaf=lambda x: x is None)
    return placed, num_spectra
