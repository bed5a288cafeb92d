"""Item 14: OpenMP workers wait passively unless the user chose otherwise, and libgomp really reads the choice
(it reads its environment once, when _C loads it). benchmarks/bench_threads.py measures why: with the cores shared,
libgomp's default spinning made 2-thread runs slower than one thread."""

import os
import re
import subprocess
import sys

import pytest

# `python -c` children run from here: from the checkout root, its unbuilt cogvideo_c/ would shadow an installed one
HERE = os.path.dirname(os.path.abspath(__file__))

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OMP_DISPLAY_ENV")

# What the child prints: the variables as cogvideo_c left them, then libgomp's own report of what it read
# (OMP_DISPLAY_ENV=verbose prints the effective GOMP_SPINCOUNT on stderr when the library loads).
CHILD = "import os, cogvideo_c; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"


def run_child(**env_vars):
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(env_vars, OMP_DISPLAY_ENV="verbose")
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120, cwd=HERE)
    assert done.returncode == 0, done.stderr[-2000:]
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)
    if spin is None:
        pytest.skip("the OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in its OMP_DISPLAY_ENV report)")
    return done.stdout.split(), int(spin.group(1))


def test_passive_waiting_is_the_default_when_the_user_set_nothing():
    (policy, spincount), effective = run_child()
    assert (policy, spincount) == ("PASSIVE", "None")
    assert effective == 0  # libgomp's own default would be 300000 spins


def test_a_wait_policy_set_by_the_user_is_kept():
    (policy, _), effective = run_child(OMP_WAIT_POLICY="active")
    assert policy == "active"
    assert effective == 30_000_000_000  # libgomp's ACTIVE spin count


def test_a_spin_count_set_by_the_user_is_kept_and_no_policy_is_added():
    (policy, spincount), effective = run_child(GOMP_SPINCOUNT="1234")
    assert (policy, spincount) == ("None", "1234")
    assert effective == 1234
