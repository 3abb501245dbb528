"""launch/detector.launch.py: declared arguments and the node it starts.

``launch`` / ``launch_ros`` have no PyPI wheels (and the unrelated PyPI package named ``launch``
must never be installed), so the file is checked statically with ``ast``: argument names and
defaults, package / executable / name / namespace of the Node, its parameters and remappings.
Where the real launch API is importable (a ROS 2 install), ``generate_launch_description()`` is
also evaluated. test/test_detector_node.py runs the exact process the launch file starts.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO_ROOT / "launch" / "detector.launch.py"
PARAMS_FILE = REPO_ROOT / "config" / "detector.yaml"
EXPECTED_ARGS = {
    "image_topic": "/camera/image_raw",
    "camera_info_topic": "/camera/camera_info",
    "checkpoint": "",
    "device": "auto",
    "threshold": ".nan",
    "namespace": "",
    "input_reliability": "best_effort",  # = config/detector.yaml's qos.reliability
}


def _tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called == name:
                found.append(node)
    return found


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _describe(node: ast.AST) -> object:
    """A literal, or ("LaunchConfiguration", name) / a list of those for substitutions."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Call):
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "?")
        return (func, *[_describe(a) for a in node.args])
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_describe(e) for e in node.elts]
    if isinstance(node, ast.Name):
        return ("name", node.id)
    return ("?", ast.dump(node))


def test_launch_file_imports_only_the_launch_api():
    modules = {alias.name if isinstance(n, ast.Import) else n.module
               for n in ast.walk(_tree()) if isinstance(n, (ast.Import, ast.ImportFrom))
               for alias in n.names}
    assert modules <= {"os", "launch", "launch.actions", "launch.substitutions", "launch_ros.actions",
                       "launch_ros.substitutions", "launch_ros.parameter_descriptions"}, modules
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in _tree().body)


def test_declared_arguments_and_defaults():
    declared = {}
    for call in _calls(_tree(), "DeclareLaunchArgument"):
        name = _describe(call.args[0])
        declared[name] = _describe(_kw(call, "default_value"))
        assert isinstance(_describe(_kw(call, "description")), str) and _describe(_kw(call, "description"))
    for name, default in EXPECTED_ARGS.items():
        assert declared.get(name) == default, (name, declared.get(name))
    # params_file defaults to share/pebal_perception/config/detector.yaml
    assert declared["params_file"] == ("PathJoinSubstitution",
                                       [("FindPackageShare", "pebal_perception"), "config", "detector.yaml"])
    # dds_profile defaults to the installed large-image Fast DDS profile
    assert declared["dds_profile"] == ("PathJoinSubstitution",
                                       [("FindPackageShare", "pebal_perception"), "config",
                                        "fastdds_large_images.xml"])


def test_dds_profile_is_applied_unless_already_set_or_empty(monkeypatch):
    """The OpaqueFunction sets FASTDDS_DEFAULT_PROFILES_FILE from dds_profile, before the Node, only when
    the argument is not '' and the variable is not set (evaluated with stand-ins for the launch API)."""
    tree = _tree()
    entities = _calls(tree, "LaunchDescription")[0].args[0].elts
    kinds = [_describe(e)[0] for e in entities]
    assert kinds.index("OpaqueFunction") < kinds.index("Node")
    (opaque,) = _calls(tree, "OpaqueFunction")
    function = _describe(_kw(opaque, "function"))
    assert function[0] == "name"
    source = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function[1])

    class Config:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    namespace = {"os": __import__("os"), "LaunchConfiguration": Config,
                 "SetEnvironmentVariable": lambda name, value: (name, value)}
    exec(compile(ast.Module(body=[source], type_ignores=[]), str(LAUNCH_FILE), "exec"), namespace)
    apply = namespace[function[1]]
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    assert apply({"dds_profile": "/p.xml"}) == [("FASTDDS_DEFAULT_PROFILES_FILE", "/p.xml")]
    assert apply({"dds_profile": ""}) == []
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/users_own.xml")
    assert apply({"dds_profile": "/p.xml"}) == []


def test_node_description():
    (node,) = _calls(_tree(), "Node")
    assert _describe(_kw(node, "package")) == "pebal_perception"
    assert _describe(_kw(node, "executable")) == "detector_node"
    assert _describe(_kw(node, "name")) == "pebal_detector"
    assert _describe(_kw(node, "namespace")) == ("LaunchConfiguration", "namespace")
    params = _kw(node, "parameters")
    assert isinstance(params, ast.List) and len(params.elts) == 2
    assert _describe(params.elts[0]) == ("LaunchConfiguration", "params_file")
    overrides = params.elts[1]
    assert isinstance(overrides, ast.Dict)
    keys = [_describe(k) for k in overrides.keys]
    assert keys == ["checkpoint", "device", "threshold", "qos.reliability"]
    values = dict(zip(keys, overrides.values))
    # A string like the params file's value, defaulting to it (sensor-data QoS).
    assert _describe(values["qos.reliability"]) == ("LaunchConfiguration", "input_reliability")
    assert _describe(values["checkpoint"]) == ("LaunchConfiguration", "checkpoint")
    assert _describe(values["device"]) == ("LaunchConfiguration", "device")
    # The threshold override must stay a double like config/detector.yaml's (.nan): rcl ignores an
    # override whose type differs from the params file's value.
    threshold = values["threshold"]
    assert _describe(threshold) == ("ParameterValue", ("LaunchConfiguration", "threshold"))
    assert _describe(_kw(threshold, "value_type")) == ("name", "float")
    remaps = {}
    for pair in _kw(node, "remappings").elts:
        src, dst = pair.elts
        remaps[_describe(src)] = _describe(dst)
    image = ("name", "image_topic")  # = LaunchConfiguration("image_topic")
    assert remaps == {"image": image, "image/compressed": [image, "/compressed"],
                      "camera_info": ("LaunchConfiguration", "camera_info_topic")}
    assigned = [n for n in ast.walk(_tree()) if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "image_topic" for t in n.targets)]
    assert [_describe(a.value) for a in assigned] == [("LaunchConfiguration", "image_topic")]


def test_installed_executable_and_params_file_exist():
    import sys
    prefix = Path(sys.prefix)
    exe = prefix / "lib" / "pebal_perception" / "detector_node"
    if not exe.exists():
        pytest.skip(f"{exe} not installed (run scripts/setup.sh)")
    assert exe.stat().st_mode & 0o111
    installed = prefix / "share" / "pebal_perception" / "config" / "detector.yaml"
    assert installed.read_text() == PARAMS_FILE.read_text(), "stale install: re-run scripts/setup.sh"
    assert (prefix / "share" / "pebal_perception" / "launch" / "detector.launch.py").read_text() == \
        LAUNCH_FILE.read_text()
    profile = REPO_ROOT / "config" / "fastdds_large_images.xml"
    assert (prefix / "share" / "pebal_perception" / "config" / profile.name).read_text() == profile.read_text()


def test_params_file_documents_every_parameter():
    data = yaml.safe_load(PARAMS_FILE.read_text())
    params = data["/**"]["ros__parameters"]
    from pebal_perception.node.params import PARAMETERS_BY_NAME  # the table the node declares from
    lines = PARAMS_FILE.read_text().splitlines()
    for name in params:
        assert name in PARAMETERS_BY_NAME, f"{name} in detector.yaml is not declared by the node"
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
        assert lines[index - 1].strip().startswith("#"), f"{name} has no comment"
    import math
    assert math.isnan(params["threshold"])  # .nan = the checkpoint's calibrated threshold


def _real_launch_available() -> bool:
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None:
        return False
    import launch
    return hasattr(launch, "LaunchDescription")


@pytest.mark.skipif(not _real_launch_available(), reason="the ROS 2 launch API (launch, launch_ros) is not installed")
def test_with_real_launch_api():  # pragma: no cover - needs a ROS 2 install
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location("detector_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    args = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert set(EXPECTED_ARGS) | {"params_file"} <= set(args)
    nodes = [e for e in description.entities if isinstance(e, Node)]
    assert len(nodes) == 1
    assert nodes[0].node_package == "pebal_perception" and nodes[0].node_executable == "detector_node"
