"""The inference core and the training package never import ROS.

``pebal_perception.core`` and ``pebal_training`` must work after a plain ``pip install .`` without
any ROS installation, and must not drag rclpy into training jobs. A fresh interpreter imports every
module of those packages (found by walking the source tree, plus the main entry points, skipping
the ones that do not exist yet) and then reports which ROS modules ended up in ``sys.modules``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ROS_PREFIXES = ("rclpy", "rosidl", "rcl_interfaces", "rmw", "rpyutils", "ament_index_python",
                "builtin_interfaces", "std_msgs", "sensor_msgs", "geometry_msgs", "diagnostic_msgs",
                "pebal_perception.msg")
ENTRY_POINTS = ("pebal_perception.core", "pebal_perception.core.models", "pebal_perception.core.scoring",
                "pebal_training", "pebal_training.losses", "pebal_training.metrics")

_PROBE = r"""
import importlib, importlib.util, json, sys, traceback
sys.path.insert(0, sys.argv[1])
modules, prefixes = json.loads(sys.argv[2]), tuple(json.loads(sys.argv[3]))
imported, missing, errors = [], [], {}
for name in modules:
    try:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
            continue
        module = importlib.import_module(name)
        if name == "pebal_perception.core.models" and hasattr(module, "list_models"):
            module.list_models()  # imports the built-in architectures lazily
        imported.append(name)
    except BaseException:
        errors[name] = traceback.format_exc(limit=-3)
ros = sorted(m for m in sys.modules if m.startswith(prefixes))
harness = sorted(m for m in sys.modules if m.startswith("pebal_perception.testing"))
print("@@RESULT@@" + json.dumps({"imported": imported, "missing": missing, "errors": errors, "ros": ros,
                                 "harness": harness}))
"""


def _source_modules() -> list[str]:
    names = []
    for top in (REPO_ROOT / "pebal_perception" / "core", REPO_ROOT / "pebal_training"):
        for path in sorted(top.rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).with_suffix("")
            if "__pycache__" in rel.parts or rel.name == "__main__":
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            names.append(".".join(parts))
    return names


@pytest.fixture(scope="module")
def probe() -> dict:
    modules = list(dict.fromkeys(["pebal_perception", *ENTRY_POINTS, *_source_modules()]))
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1")
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(REPO_ROOT), json.dumps(modules),
                           json.dumps(ROS_PREFIXES)],
                          capture_output=True, text=True, timeout=600, cwd=str(REPO_ROOT), env=env)
    marker = proc.stdout.rfind("@@RESULT@@")
    assert proc.returncode == 0 and marker >= 0, \
        f"probe interpreter failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout[marker + len("@@RESULT@@"):])
    result["requested"] = modules
    return result


@pytest.mark.slow
def test_core_and_training_modules_import(probe):
    assert "pebal_perception.core" in probe["imported"]
    assert not probe["errors"], "modules failed to import:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in probe["errors"].items())


@pytest.mark.slow
def test_no_ros_module_is_imported(probe):
    assert probe["imported"], "nothing was imported"
    assert "rclpy" not in probe["ros"]
    assert not probe["ros"], (f"importing {len(probe['imported'])} ROS-free modules loaded ROS modules: "
                              f"{probe['ros']}")


def _imported_names(path: Path) -> set[str]:
    """Every module a source file imports (absolute names; relative imports resolved)."""
    import ast

    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(REPO_ROOT).parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("top, forbidden", [
    ("pebal_training", ("pebal_perception.cli", "pebal_perception.node")),
    ("pebal_perception/core", ("pebal_perception.cli", "pebal_perception.node", "pebal_perception.testing",
                               "pebal_training")),
    ("pebal_perception/testing", ("pebal_training",)),
])
def test_layering_of_source_imports(top, forbidden):
    """Training builds on the core only (and the CLI helpers both packages share, ``pebal_perception.cli_args``);
    the core imports neither perception's CLI/node/testing packages nor training; the test harness
    does not import training (a caller passes in what it needs from there)."""
    bad = []
    for path in sorted((REPO_ROOT / top).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        for name in sorted(_imported_names(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_the_test_harness_is_not_imported(probe):
    """pebal_perception.testing (the ROS test harness, the soak runner) is for tests and benchmarks only."""
    assert probe["imported"], "nothing was imported"
    assert not probe["harness"], probe["harness"]
