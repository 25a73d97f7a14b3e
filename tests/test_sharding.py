"""Data-parallel training and sampling over 4 simulated CPU devices (in `on_four_devices.py`, run in a
process of its own), and the CPU's split into one device per core unless the user chose a count."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from minidiff.machinery.sharding import one_device_per_cpu_core

TESTS = Path(__file__).resolve().parent


def test_on_four_simulated_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "pytest", str(TESTS / "on_four_devices.py"), "-n", "0",
                             "-p", "no:cacheprovider", "-q"], env=env, capture_output=True, text=True, timeout=900,
                            cwd=TESTS.parent)
    assert result.returncode == 0 and "4 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("chosen, expected", [({}, None), ({"JAX_NUM_CPU_DEVICES": "3"}, 3),
                                              ({"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}, 5)])
def test_the_cpu_splits_into_one_device_per_core_unless_the_count_was_chosen(chosen, expected):
    """In a fresh interpreter (the count is fixed when JAX starts): one device per core, or the user's choice;
    calling it again once JAX has started changes nothing. Importing the command (all the library) must
    not start JAX."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    result = subprocess.run([sys.executable, __file__, str(expected or len(os.sched_getaffinity(0)))],
                            env=env | {"JAX_PLATFORMS": "cpu"} | chosen, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


if __name__ == "__main__":  # the fresh interpreter of the test above
    import minidiff.command.cli  # noqa: F401  (what `minidiff` imports before it sets the devices up)

    expected = int(sys.argv[1])
    assert one_device_per_cpu_core() == expected == len(jax.devices()), (expected, jax.devices())
    assert one_device_per_cpu_core() == expected  # JAX has started: nothing changes
