"""Launches the PEBAL road-anomaly detector (pebal_perception/detector_node).

    ros2 launch pebal_perception detector.launch.py image_topic:=/camera/image_raw \
        checkpoint:=/path/to/model.pth device:=cuda threshold:=-9.5

Parameters come from ``params_file`` (default: share/pebal_perception/config/detector.yaml); the
``checkpoint``, ``device`` and ``threshold`` arguments override it (``threshold:=.nan``, the default,
= the checkpoint's calibrated threshold; the override is always a double, like the parameter in the
params file: rcl silently ignores an override whose type differs from the file's value). The node
subscribes to ``image_topic``, ``image_topic``/compressed (only with ``subscribe_compressed:=true``) and
``camera_info_topic``.

``dds_profile`` (default: share/pebal_perception/config/fastdds_large_images.xml) becomes the node's
``FASTDDS_DEFAULT_PROFILES_FILE`` unless that variable is already set; ``dds_profile:=''`` leaves the
environment as it is. Camera drivers and bag players publishing raw images need the same profile.

More arguments. Those marked "params file" default to '' = the params file's value (or the node's
default where the file has none); given, they override it:

* ``use_sim_time`` (params file; the node's default false): true = the node's clock follows
  ``/clock`` (a simulator, or ``pebal-bag play --clock``).
* ``log_level`` (info): ``--log-level`` of the node (debug | info | warn | error | fatal).
* ``camera_height_m``, ``camera_pitch_rad`` (params file; .nan = unknown): camera mounting for the
  obstacles' flat-ground positions; passed as doubles, like ``threshold``.
* ``subscribe_compressed`` (params file; false): also subscribe to ``image_topic``/compressed.
* ``input_reliability`` (params file; best_effort): the standard QoS override
  ``qos_overrides.<image topic>.subscription.reliability`` of the image subscription, the topic
  resolved in the node's namespace.
* ``respawn`` (false), ``respawn_delay`` (2.0 s): restart the node when it dies.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def _dds_profile(context):
    """FASTDDS_DEFAULT_PROFILES_FILE := dds_profile, unless it is '' or the variable is already set."""
    profile = LaunchConfiguration("dds_profile").perform(context)
    if not profile or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return []
    return [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile)]


#: Launch arguments that override a node parameter only when given ('' = the params file's value):
#: argument -> (parameter, type). Typed like the params file's values: rcl ignores an override whose type
#: differs from the file's (a YAML-parsed "1" would be an integer).
OPTIONAL_PARAMETERS = {
    "use_sim_time": ("use_sim_time", bool),
    "camera_height_m": ("camera.height_m", float),
    "camera_pitch_rad": ("camera.pitch_rad", float),
    "subscribe_compressed": ("subscribe_compressed", bool),
}


def _resolved_topic(topic: str, namespace: str) -> str:
    """``topic`` as the node resolves it (a relative name lies in the node's namespace)."""
    if topic.startswith("/"):
        return topic
    return f"{namespace.rstrip('/')}/{topic}" if namespace.strip("/") else f"/{topic}"


def _detector_node(context):
    """The node; an OpaqueFunction because launch takes ``respawn_delay`` only as a float, the QoS override's
    name holds the image topic, and optional arguments are passed only when given."""
    image_topic = LaunchConfiguration("image_topic")
    overrides = {
        "checkpoint": LaunchConfiguration("checkpoint"),
        "device": LaunchConfiguration("device"),
        # Always a double: .nan = the checkpoint's calibrated threshold.
        "threshold": ParameterValue(LaunchConfiguration("threshold"), value_type=float),
    }
    for argument, (parameter, value_type) in OPTIONAL_PARAMETERS.items():
        if LaunchConfiguration(argument).perform(context).strip():
            overrides[parameter] = ParameterValue(LaunchConfiguration(argument), value_type=value_type)
    if LaunchConfiguration("input_reliability").perform(context).strip():
        topic = _resolved_topic(image_topic.perform(context), LaunchConfiguration("namespace").perform(context))
        overrides[f"qos_overrides.{topic}.subscription.reliability"] = LaunchConfiguration("input_reliability")
    return [Node(
        package="pebal_perception",
        executable="detector_node",
        name="pebal_detector",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        respawn=LaunchConfiguration("respawn"),
        respawn_delay=float(LaunchConfiguration("respawn_delay").perform(context)),
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to process"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="sensor_msgs/CameraInfo of that camera (for ground positions)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="model checkpoint file; '' = the embedded default model"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cuda | cuda:N | cpu"),
        DeclareLaunchArgument("threshold", default_value=".nan",
                              description="anomaly score threshold; .nan = the checkpoint's calibrated one"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("pebal_perception"), "config", "detector.yaml"]),
                              description="YAML parameter file of the node"),
        DeclareLaunchArgument("input_reliability", default_value="",
                              description="QoS of the image subscription (qos_overrides.<topic>.subscription."
                                          "reliability): best_effort (sensor data; matches every publisher) | "
                                          "reliable (needs a reliable publisher; no large frames lost in "
                                          "transport); '' = the params file's (best_effort)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("dds_profile",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("pebal_perception"), "config", "fastdds_large_images.xml"]),
                              description="Fast DDS XML profile for large images (FASTDDS_DEFAULT_PROFILES_FILE "
                                          "unless already set); '' = leave the environment as it is"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: the node's clock follows /clock (a simulator, or "
                                          "pebal-bag play --clock); '' = the params file's (false)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="log level of the node: debug | info | warn | error | fatal"),
        DeclareLaunchArgument("camera_height_m", default_value="",
                              description="camera height above the road in metres (for ground positions); "
                                          ".nan = unknown; '' = the params file's"),
        DeclareLaunchArgument("camera_pitch_rad", default_value="",
                              description="camera pitch in radians, positive = looking down; .nan = unknown; "
                                          "'' = the params file's"),
        DeclareLaunchArgument("subscribe_compressed", default_value="",
                              description="also subscribe to image_topic/compressed (sensor_msgs/"
                                          "CompressedImage); leave false when the raw topic is published; "
                                          "'' = the params file's"),
        DeclareLaunchArgument("respawn", default_value="false",
                              description="restart the node whenever it exits before launch shuts down (crash, out of "
                                          "memory)"),
        DeclareLaunchArgument("respawn_delay", default_value="2.0",
                              description="seconds to wait before restarting the node (with respawn:=true)"),
        OpaqueFunction(function=_dds_profile),
        OpaqueFunction(function=_detector_node),
    ])
