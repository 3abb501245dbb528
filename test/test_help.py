"""Every executable answers --help with usage (and, for the node, every parameter of its table) and exit 0,
without starting anything."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pebal_perception.core.settings import PARAMETERS, wants_help

VENV = Path(sys.prefix)
LAUNCHERS = [VENV / "lib" / "pebal_perception" / "detector_node",
             VENV / "lib" / "pebal_perception" / "detector_lifecycle_node",
             VENV / "lib" / "pebal_training" / "finetune"]
CONSOLE = ["pebal-detect", "pebal-bag", "pebal-camera", "pebal-synth", "pebal-finetune", "pebal-eval",
           "pebal-calibrate", "pebal-export"]


def _run(exe: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}
    return subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("exe", LAUNCHERS, ids=lambda p: p.name)
def test_ros_executables_print_help_and_exit_0(exe):
    if not exe.is_file():
        pytest.skip(f"{exe} not installed (scripts/setup.sh)")
    res = _run(exe)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage:")
    if exe.name.startswith("detector_"):
        for spec in PARAMETERS:
            assert f"  {spec.name} ({spec.type}" in res.stdout, spec.name
        assert "~/obstacle_mask" in res.stdout and "ready:" not in res.stdout + res.stderr
        assert "qos_overrides.<input topic>.subscription." in res.stdout  # the standard QoS overrides
        assert res.stdout.startswith(f"usage: {exe.name} ")
        assert ("lifecycle" in res.stdout) == (exe.name == "detector_lifecycle_node")


@pytest.mark.parametrize("name", CONSOLE)
def test_console_scripts_print_help_and_exit_0(name):
    exe = VENV / "bin" / name
    if not exe.is_file():
        pytest.skip(f"{exe} not installed")
    res = _run(exe)
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout


def test_help_is_only_the_programs_own_argument():
    assert wants_help(["--help"]) and wants_help(["-h", "--ros-args", "-p", "x:=1"])
    assert not wants_help(["--ros-args", "-r", "__node:=--help"]) and not wants_help([])
