"""Launches the PEBAL road-anomaly detector (pebal_perception/detector_node).

    ros2 launch pebal_perception detector.launch.py image_topic:=/camera/image_raw \
        checkpoint:=/path/to/model.pth device:=cuda threshold:=-9.5

Parameters come from ``params_file`` (default: share/pebal_perception/config/detector.yaml); the
``checkpoint``, ``device`` and ``threshold`` arguments override it (``threshold:=.nan``, the default,
= the checkpoint's calibrated threshold; the override is always a double, like the parameter in the
params file: rcl silently ignores an override whose type differs from the file's value). The node
subscribes to ``image_topic``, ``image_topic``/compressed (only with ``subscribe_compressed: true``) and
``camera_info_topic``.

``dds_profile`` (default: share/pebal_perception/config/fastdds_large_images.xml) becomes the node's
``FASTDDS_DEFAULT_PROFILES_FILE`` unless that variable is already set; ``dds_profile:=''`` leaves the
environment as it is. Camera drivers and bag players publishing raw images need the same profile.
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


def generate_launch_description():
    image_topic = LaunchConfiguration("image_topic")
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
        DeclareLaunchArgument("input_reliability", default_value="best_effort",
                              description="QoS of the image subscription: best_effort (sensor data; matches "
                                          "every publisher) | reliable (needs a reliable publisher; no large "
                                          "frames lost in transport)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("dds_profile",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("pebal_perception"), "config", "fastdds_large_images.xml"]),
                              description="Fast DDS XML profile for large images (FASTDDS_DEFAULT_PROFILES_FILE "
                                          "unless already set); '' = leave the environment as it is"),
        OpaqueFunction(function=_dds_profile),
        Node(
            package="pebal_perception",
            executable="detector_node",
            name="pebal_detector",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "checkpoint": LaunchConfiguration("checkpoint"),
                    "device": LaunchConfiguration("device"),
                    # Always a double (YAML-parsed): .nan = the checkpoint's calibrated threshold.
                    "threshold": ParameterValue(LaunchConfiguration("threshold"), value_type=float),
                    "qos.reliability": LaunchConfiguration("input_reliability"),
                },
            ],
            remappings=[
                ("image", image_topic),
                ("image/compressed", [image_topic, "/compressed"]),
                ("camera_info", LaunchConfiguration("camera_info_topic")),
            ],
        ),
    ])
