"""launch/detector.launch.py: declared arguments and the node it starts.

``launch`` / ``launch_ros`` have no PyPI wheels (and the unrelated PyPI package named ``launch``
must never be installed), so the file is checked statically with ``ast``: argument names and
defaults, package / executable / name / namespace of the Node, its parameters, remappings,
ros_arguments and respawn.
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
    "input_reliability": "",  # '' = the params file's (sensor-data QoS)
    "use_sim_time": "",
    "log_level": "info",
    "camera_height_m": "",
    "camera_pitch_rad": "",
    "subscribe_compressed": "",
    "respawn": "false",
    "respawn_delay": "2.0",
}
# Arguments that set a node parameter only when given, typed like the params file's value (rcl ignores
# an override whose type differs from the file's): parameter -> (argument, type).
OPTIONAL_PARAMETERS = {
    "use_sim_time": ("use_sim_time", bool),
    "camera.height_m": ("camera_height_m", float),
    "camera.pitch_rad": ("camera_pitch_rad", float),
    "subscribe_compressed": ("subscribe_compressed", bool),
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


def _function(tree: ast.Module, opaque: ast.Call) -> ast.FunctionDef:
    """The module-level function an OpaqueFunction(function=NAME) calls."""
    function = _describe(_kw(opaque, "function"))
    assert function[0] == "name"
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function[1])


def _evaluate(tree: ast.Module, function: ast.FunctionDef, **names):
    """``function`` compiled with the module's own helpers (its other top-level functions but
    generate_launch_description, its constants) and ``names`` (stand-ins for the launch API) as globals."""
    namespace = {"os": __import__("os"), **names}
    body = [n for n in tree.body if isinstance(n, ast.Assign)
            or (isinstance(n, ast.FunctionDef) and n.name != "generate_launch_description")]
    exec(compile(ast.Module(body=body, type_ignores=[]), str(LAUNCH_FILE), "exec"), namespace)
    return namespace[function.name]


class _Config:
    """Stand-in for LaunchConfiguration: perform() looks the name up in the context (a dict)."""

    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


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
    functions = [_describe(_kw(e, "function")) for e in entities if _describe(e)[0] == "OpaqueFunction"]
    assert functions == [("name", "_dds_profile"), ("name", "_detector_node")]  # the profile first
    (opaque,) = [c for c in _calls(tree, "OpaqueFunction") if _describe(_kw(c, "function"))[1] == "_dds_profile"]
    apply = _evaluate(tree, _function(tree, opaque), LaunchConfiguration=_Config,
                      SetEnvironmentVariable=lambda name, value: (name, value))
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    assert apply({"dds_profile": "/p.xml"}) == [("FASTDDS_DEFAULT_PROFILES_FILE", "/p.xml")]
    assert apply({"dds_profile": ""}) == []
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/users_own.xml")
    assert apply({"dds_profile": "/p.xml"}) == []


class _Value:
    """Stand-in for launch_ros's ParameterValue."""

    def __init__(self, value, value_type):
        self.value, self.value_type = value, value_type


def _node(**given):
    """The Node the launch file starts (its keyword arguments), evaluated with stand-ins for the launch API
    and the arguments' defaults updated with ``given``."""
    tree = _tree()
    (opaque,) = [c for c in _calls(tree, "OpaqueFunction") if _describe(_kw(c, "function"))[1] == "_detector_node"]
    build = _evaluate(tree, _function(tree, opaque), LaunchConfiguration=_Config, ParameterValue=_Value,
                      Node=lambda **kwargs: kwargs)
    (node,) = build({**EXPECTED_ARGS, **given})
    return node


def _name(value):
    return value.name if isinstance(value, _Config) else [_name(v) for v in value] if isinstance(value, list) else value


def test_node_description():
    node = _node()
    assert (node["package"], node["executable"], node["name"]) == ("pebal_perception", "detector_node",
                                                                  "pebal_detector")
    assert _name(node["namespace"]) == "namespace"
    assert _name(node["ros_arguments"]) == ["--log-level", "log_level"]
    assert _name(node["respawn"]) == "respawn"
    params_file, overrides = node["parameters"]
    assert _name(params_file) == "params_file"
    # With the defaults only checkpoint, device and threshold override the params file.
    assert list(overrides) == ["checkpoint", "device", "threshold"]
    assert _name(overrides["checkpoint"]) == "checkpoint" and _name(overrides["device"]) == "device"
    assert _name(overrides["threshold"].value) == "threshold" and overrides["threshold"].value_type is float
    remaps = {src: _name(dst) for src, dst in node["remappings"]}
    assert remaps == {"image": "image_topic", "image/compressed": ["image_topic", "/compressed"],
                      "camera_info": "camera_info_topic"}


def test_given_arguments_reach_the_node_typed():
    """Each optional argument, when given, overrides its parameter typed like the params file's value;
    input_reliability becomes the standard QoS override of the image topic as the node resolves it."""
    given = {"use_sim_time": "true", "camera_height_m": "1.5", "camera_pitch_rad": "0.1",
             "subscribe_compressed": "true", "input_reliability": "reliable"}
    overrides = _node(**given)["parameters"][1]
    for parameter, (argument, value_type) in OPTIONAL_PARAMETERS.items():
        value = overrides[parameter]
        assert _name(value.value) == argument and value.value_type is value_type, parameter
    assert _name(overrides["qos_overrides./camera/image_raw.subscription.reliability"]) == "input_reliability"
    for topic, namespace, resolved in (("front/image", "/car", "/car/front/image"), ("front/image", "", "/front/image"),
                                       ("/abs/image", "/car", "/abs/image")):
        overrides = _node(input_reliability="reliable", image_topic=topic, namespace=namespace)["parameters"][1]
        assert f"qos_overrides.{resolved}.subscription.reliability" in overrides, (topic, namespace)
    assert not any(k.startswith("qos_overrides.") for k in _node()["parameters"][1])


def test_optional_arguments_match_the_params_file_types():
    """The types the optional arguments are passed as are the params file's (use_sim_time: rclpy's bool)."""
    params = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    for parameter, (_argument, value_type) in OPTIONAL_PARAMETERS.items():
        if parameter == "use_sim_time":  # rclpy's own parameter, not in the params file
            assert value_type is bool
            continue
        assert type(params[parameter]) is value_type, parameter


def test_respawn_delay_reaches_the_node_as_a_float():
    """launch takes Node(respawn_delay=) only as a float: the OpaqueFunction that builds the Node
    converts the argument."""
    node = _node(respawn_delay="2.0")
    assert node["respawn_delay"] == 2.0 and isinstance(node["respawn_delay"], float)
    assert _node(respawn_delay="0.5")["respawn_delay"] == 0.5


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
    from pebal_perception.core.settings import PARAMETERS_BY_NAME  # the table the node declares from
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
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location("detector_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    args = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert set(EXPECTED_ARGS) | {"params_file"} <= set(args)
    # The Node comes from an OpaqueFunction (respawn_delay must be a float).
    context = LaunchContext()
    context.launch_configurations.update({**EXPECTED_ARGS, "dds_profile": ""})
    nodes = [n for e in description.entities if isinstance(e, OpaqueFunction)
             for n in (e.execute(context) or []) if isinstance(n, Node)]
    assert len(nodes) == 1
    assert nodes[0].node_package == "pebal_perception" and nodes[0].node_executable == "detector_node"
