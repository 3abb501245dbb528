"""Test configuration shared by every test module.

* The source tree is imported first (not an installed copy), so tests test what is checked out.
* Every ROS process started by a test inherits loopback-only DDS discovery and a domain id of its own
  (DDS traffic must never leave this machine, and parallel test runs must not hear each other).
* ``shared_assets`` points at ``../shared/assets`` (real third-party data that is never copied into the
  repository), ``shared_benchmarks`` at ``../shared/benchmarks`` (labelled anomaly sets, evaluation only);
  tests that need them skip cleanly when they are absent.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pebal_perception.testing import ros_harness  # noqa: E402 - after the source tree is on sys.path

# Loopback-only discovery; the caller's ROS_DOMAIN_ID unless unset or the default 0, else one derived
# from the pid (1..100, safe on every DDS port layout). The same for every ROS process a test starts.
ros_harness.use_loopback()

# Compiled inference graphs (core/backends.py) go to a cache of this test session, not the user's
# ~/.cache/pebal; child processes (the node) inherit it. Models of the same weights share entries.
# The key that signs its entries lies outside it, in a folder of the session too.
if "PEBAL_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["PEBAL_CACHE_DIR"] = tempfile.mkdtemp(prefix="pebal_test_cache_")
    os.environ.setdefault("PEBAL_CACHE_KEY", str(Path(tempfile.mkdtemp(prefix="pebal_test_key_")) / "cache-key"))

SHARED_ASSETS = Path(os.environ.get("PEBAL_SHARED_ASSETS", REPO_ROOT.parent / "shared" / "assets"))
SHARED_BENCHMARKS = Path(os.environ.get("PEBAL_SHARED_BENCHMARKS", REPO_ROOT.parent / "shared" / "benchmarks"))


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"shared assets not present at {SHARED_ASSETS}")
    return SHARED_ASSETS


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    """``../shared/benchmarks``: labelled anomaly validation sets, for evaluation only (never copied)."""
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"shared benchmarks not present at {SHARED_BENCHMARKS}")
    return SHARED_BENCHMARKS


@pytest.fixture(autouse=True)
def _torch_global_state_is_not_leaked():
    """A test (or code it calls in-process) must not change autograd mode or the intra-op thread count
    for the tests after it (bit-exactness tests compare runs that must use the same thread count)."""
    import torch

    threads = torch.get_num_threads()
    yield
    leaked_grad = not torch.is_grad_enabled()
    leaked_threads = torch.get_num_threads() != threads
    torch.set_grad_enabled(True)
    torch.set_num_threads(threads)
    assert not leaked_grad, "autograd was left disabled (torch.set_grad_enabled(False) outside a context)"
    assert not leaked_threads, "torch.set_num_threads was changed and not restored"
