"""Sharded sweeps: several host devices and several processes give the single-device results.

Devices are fixed when JAX starts, so each case runs `_sharding_worker.py` in fresh processes with
`XLA_FLAGS=--xla_force_host_platform_device_count=K`, and compares against a sweep in this process.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gaussdiff_jax as gdj

WORKER = Path(__file__).with_name("_sharding_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _sharding_worker import case

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

METRICS = ("kl", "kl_reverse", "w2")
TIMEOUT_S = 240


def _env(devices_per_process: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference():
    res = gdj.sweep(*case(), metrics=METRICS)
    return {m: np.asarray(getattr(res, m)) for m in METRICS}


def _compare(out: dict, reference: dict):
    for m in METRICS:
        unsharded = np.asarray(out["unsharded"][m])
        np.testing.assert_allclose(unsharded, reference[m], rtol=1e-13, atol=0)
        for axis in ("spectra", "modes"):
            got = np.asarray(out[axis][m])
            assert got.shape == reference[m].shape == (3, 3, 3, 2)
            # Only the order of floating-point sums may differ (per-device partial sums for "modes").
            np.testing.assert_allclose(got, unsharded, rtol=1e-12, atol=0, err_msg=f"{axis} {m}")


def test_sharded_over_four_host_devices(tmp_path, reference):
    path = tmp_path / "out.json"
    subprocess.run(
        [sys.executable, str(WORKER), str(path)], env=_env(4), check=True, timeout=TIMEOUT_S, capture_output=True
    )
    out = json.loads(path.read_text())
    assert out["devices"] == 4 and out["processes"] == 1
    _compare(out, reference)


def test_sharded_over_two_processes(tmp_path, reference):
    """jax.distributed on localhost: 2 processes x 2 host devices; every process gets the full results."""
    port = _free_port()
    procs, paths = [], []
    for pid in range(2):
        paths.append(tmp_path / f"out{pid}.json")
        cmd = [sys.executable, str(WORKER), str(paths[-1]), str(pid), "2", str(port)]
        procs.append(subprocess.Popen(cmd, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    for path in paths:
        out = json.loads(path.read_text())
        assert out["devices"] == 4 and out["processes"] == 2
        _compare(out, reference)


def test_device_sharding_errors():
    with pytest.raises(ValueError, match="axis must be"):
        gdj.DeviceSharding(axis="batch")
    with pytest.raises(ValueError, match="devices is empty"):
        gdj.DeviceSharding(devices=())
    with pytest.raises(ValueError, match="sharding must be"):
        gdj.sweep(*case(), sharding=4)
