"""The node's parameter table (core/settings.py), the output message builder (node/outputs.py) and the
model-name aliases of the registry.

* The table and ``config/detector.yaml`` hold the same names and defaults, and the YAML documents
  every entry; ``pebal-bag process`` resolves its parameters from the table (defaults, type, range,
  choices); the rclpy descriptors the node declares carry the table's type, range and read-only flag.
* :func:`build_output_messages` maps a processed frame to the same messages for rclpy and rosbags
  classes (both checked when installed; a ROS-free stand-in always).
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from pebal_perception.core.obstacles import Obstacle
from pebal_perception.node.outputs import OUTPUT_TOPICS, MessageClasses, build_output_messages, uint8_array
from pebal_perception.core.tracking import TrackingConfig
from pebal_perception.core.settings import (CONFIG_PARAMETERS, PARAMETERS, PARAMETERS_BY_NAME, READ_ONLY,
                                            TRACKING_PARAMETERS, RuntimeSettings, initial_settings, params_file_text,
                                            resolve_parameters)
from pebal_perception.core.postprocess import process_frame
from pebal_perception.core.postprocess_config import PostProcessConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "config" / "detector.yaml"
NAN = float("nan")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------------------------- the table

def test_table_and_params_file_agree():
    params = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    documented = [p for p in PARAMETERS if not p.deprecated]  # deprecated ones are only listed in --help
    assert {p.name for p in documented} == set(params), "the same names"
    for spec in documented:
        assert _same(spec.default, params[spec.name]), (spec.name, spec.default, params[spec.name])
        spec.check(params[spec.name])  # the file's values pass the table's checks
    # the file is the table's: each entry under its description (python -m pebal_perception.core.settings)
    assert PARAMS_FILE.read_text() == params_file_text(), \
        "config/detector.yaml differs from the table: python -m pebal_perception.core.settings > config/detector.yaml"
    for spec in documented:
        assert spec.description.strip(), spec.name
        assert spec.description.rstrip().endswith("Read-only." if spec.read_only else "Changeable at run time."), \
            spec.name


def test_table_entries_are_well_formed():
    assert len({p.name for p in PARAMETERS}) == len(PARAMETERS)
    for spec in PARAMETERS:
        assert _same(spec.check(spec.default), spec.default), spec.name  # the default passes its own check
    assert set(READ_ONLY) == {p.name for p in PARAMETERS if p.read_only}
    runtime = {p.name for p in PARAMETERS if not p.read_only}
    assert runtime == {"threshold", "smoothing", "camera.height_m", "camera.pitch_rad", "adaptation",
                       "adaptation_momentum", *CONFIG_PARAMETERS, *TRACKING_PARAMETERS}


def test_resolve_parameters_fills_defaults_and_checks_values():
    values = resolve_parameters({"min_obstacle_area": 20, "camera.height_m": 2, "not_a_parameter": "x"})
    assert list(values) == [p.name for p in PARAMETERS]  # every parameter, unknown names ignored
    assert values["min_obstacle_area"] == 20 and values["camera.height_m"] == 2.0
    assert values["device"] == "auto" and values["roi"] == [0.0, 0.0, 1.0, 1.0] and math.isnan(values["threshold"])
    assert resolve_parameters({"threshold": "auto"})["threshold"] == "auto"  # dynamically typed
    for bad, reason in (({"smoothing": "false"}, "smoothing"), ({"qos.depth": 0}, "qos.depth"),
                        ({"precision": "fp64"}, "precision"), ({"roi": "all"}, "roi"),
                        ({"diagnostics.window_s": 0.0}, "diagnostics.window_s"), ({"cpu_threads": True}, "cpu")):
        with pytest.raises(ValueError, match=reason):
            resolve_parameters(bad)


def test_initial_settings_from_the_defaults():
    settings = initial_settings(resolve_parameters({}), -9.0)
    assert isinstance(settings, RuntimeSettings) and settings.threshold_param is None
    assert repr(settings.config) == repr(PostProcessConfig(  # repr: NaN fields compare unequal
        threshold=-9.0, restrict_to_drivable=True, min_obstacle_area=50, hysteresis=1.0, boundary_band=0.03,
        min_footprint_on_road=0.5, border_margin=0.01, horizon_margin=0.0, max_range_m=60.0, far_road_width=0.1,
        min_width_m=0.1, road_width_m=7.0, analysis_width=1024, max_surface_share=0.25,
        min_fill=0.3, max_width_share=0.5, min_extent_share=0.5, max_known_share=0.5))
    assert settings.tracking == TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=2)
    assert settings.smoothing and not settings.positions_wanted
    mounted = initial_settings(resolve_parameters({"camera.height_m": 1.5, "camera.pitch_rad": 0.1,
                                                   "threshold": -5.0}), -9.0)
    assert mounted.positions_wanted and mounted.config.threshold == -5.0 and mounted.threshold_param == -5.0
    with pytest.raises(ValueError, match="camera.height_m"):
        initial_settings(resolve_parameters({"camera.height_m": 1e308}), -9.0)


def test_node_descriptors_come_from_the_table():
    pytest.importorskip("rclpy")
    try:
        from pebal_perception.node.parameters import parameter_descriptor
    except ImportError as exc:  # pragma: no cover - messages not built
        pytest.skip(f"detector node not importable: {exc}")
    from rcl_interfaces.msg import ParameterType

    for spec in PARAMETERS:
        d = parameter_descriptor(spec)
        assert d.description == spec.description and d.read_only == spec.read_only
        assert d.dynamic_typing == spec.dynamic_typing
        expected = {"string": ParameterType.PARAMETER_STRING, "integer": ParameterType.PARAMETER_INTEGER,
                    "double": ParameterType.PARAMETER_DOUBLE, "bool": ParameterType.PARAMETER_BOOL,
                    "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY}[spec.type]
        assert d.type == expected, spec.name
        if spec.value_range is None:
            assert not d.integer_range and not d.floating_point_range
        elif spec.type == "integer":
            assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == spec.value_range
        else:
            assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == spec.value_range
    assert PARAMETERS_BY_NAME["min_obstacle_area"].value_range == (0, 100_000_000)


# ------------------------------------------------------------------------------------- output messages

def _frame():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    semantic = np.zeros((24, 40), np.uint8)
    semantic[:, 20:] = 1
    score = np.full((24, 40), -10.0, np.float32)
    score[4:10, 4:12] = -1.0
    score[15:20, 25:35] = -2.0
    frame = process_frame(semantic, score, PostProcessConfig(threshold=-5.0, min_obstacle_area=4))
    frame.obstacles[0].ground_position = (1.0, 2.0, 3.0)
    return rgb, semantic, score, frame


def _record(kind):
    return lambda **fields: SimpleNamespace(kind=kind, **fields)


PLAIN = MessageClasses(Image=_record("Image"), AnomalyResult=_record("AnomalyResult"), Obstacle=_record("Obstacle"),
                       Point=_record("Point"))


def _image_array(msg) -> np.ndarray:
    data = np.frombuffer(bytes(msg.data), np.uint8)
    dtype = np.dtype("<f4") if msg.encoding == "32FC1" else np.uint8
    channels = 3 if msg.encoding == "rgb8" else 1
    return data.view(dtype).reshape(msg.height, msg.width, channels).squeeze(-1 if channels == 1 else None)


def _summary(messages) -> dict:
    """Everything the builder wrote, in plain Python values (comparable across message classes)."""
    out = {}
    for topic, msg in messages.items():
        if topic == "result":
            out[topic] = dict(
                header=msg.header, model_id=msg.model_id, threshold=msg.threshold,
                anomalous_fraction=msg.anomalous_fraction, max_score=msg.max_score,
                processing_time_ms=msg.processing_time_ms,
                obstacles=[(o.id, o.x_offset, o.y_offset, o.width, o.height, o.area, o.mean_score, o.max_score,
                            o.drivable_fraction, o.track_id, o.age_frames, o.held, o.width_m,
                            (getattr(o, "first_seen", None) and (o.first_seen.sec, o.first_seen.nanosec)),
                            (o.ground_position.x, o.ground_position.y, o.ground_position.z))
                           for o in msg.obstacles])
        else:
            out[topic] = (msg.header, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                          _image_array(msg).tobytes())
    return out


def test_output_messages_map_a_frame():
    rgb, semantic, score, frame = _frame()
    header = object()
    messages = build_output_messages(rgb, semantic, score, frame, header, PLAIN, model_id="m", threshold=-5.0)
    assert list(messages) == ["semantic", "energy", "obstacle_mask", "result"]
    assert all(m.header is header for m in messages.values())  # the input image's header
    np.testing.assert_array_equal(_image_array(messages["semantic"]), semantic)
    np.testing.assert_array_equal(_image_array(messages["energy"]), score)
    np.testing.assert_array_equal(_image_array(messages["obstacle_mask"]), frame.mask.astype(np.uint8) * 255)
    assert [messages[t].encoding for t in ("semantic", "energy", "obstacle_mask")] == ["mono8", "32FC1", "mono8"]
    result = messages["result"]
    assert (result.model_id, result.threshold, result.processing_time_ms) == ("m", -5.0, 0.0)
    assert result.anomalous_fraction == pytest.approx(frame.anomalous_fraction)
    assert result.max_score == pytest.approx(-1.0)
    assert len(result.obstacles) == 2
    first, second = result.obstacles
    o: Obstacle = frame.obstacles[0]
    assert (first.id, first.x_offset, first.y_offset, first.width, first.height, first.area) == \
        (o.id, *o.bbox, o.area)
    assert (first.ground_position.x, first.ground_position.y, first.ground_position.z) == (1.0, 2.0, 3.0)
    assert math.isnan(second.ground_position.x)
    with_overlay = build_output_messages(rgb, semantic, score, frame, header, PLAIN, model_id="m", threshold=-5.0,
                                         overlay=True)
    assert [t for t in OUTPUT_TOPICS if t in with_overlay] == list(with_overlay)  # publishing order
    assert with_overlay["overlay"].encoding == "rgb8" and _image_array(with_overlay["overlay"]).shape == rgb.shape


def test_rclpy_and_rosbags_messages_are_the_same():
    pytest.importorskip("rosbags")
    pytest.importorskip("rclpy")
    try:
        from pebal_perception.node.detector_node import ROS_MESSAGES
        from std_msgs.msg import Header
    except ImportError as exc:  # pragma: no cover - messages not built
        pytest.skip(f"detector node not importable: {exc}")
    from pebal_perception.core.bag import header as bag_header
    from pebal_perception.core.bag import deserialize, msg_class, serialize

    rgb, semantic, score, frame = _frame()
    bag_classes = MessageClasses(
        Image=msg_class("sensor_msgs/msg/Image"), AnomalyResult=msg_class("pebal_perception/msg/AnomalyResult"),
        Obstacle=msg_class("pebal_perception/msg/Obstacle"), Point=msg_class("geometry_msgs/msg/Point"),
        image_data=uint8_array, Time=msg_class("builtin_interfaces/msg/Time"))
    live = build_output_messages(rgb, semantic, score, frame, Header(frame_id="cam"), ROS_MESSAGES, model_id="m",
                                 threshold=-5.0, overlay=True)
    offline = build_output_messages(rgb, semantic, score, frame, bag_header(0, "cam"), bag_classes, model_id="m",
                                    threshold=-5.0, overlay=True)
    assert list(live) == [*offline, "processing_time_ms"]  # the bag classes have no std_msgs/Float32
    live.pop("processing_time_ms")

    def plain(summary):
        for value in summary.values():
            if isinstance(value, dict):
                value["header"] = value["header"].frame_id
        return {k: ((v[0].frame_id, *v[1:]) if isinstance(v, tuple) else v) for k, v in summary.items()}

    assert _nan_equal(plain(_summary(live)), plain(_summary(offline)))
    # On the wire: the live messages' CDR, read back with rosbags, holds what the offline ones hold
    # (bytes may differ in the padding, which rclpy leaves uninitialised).
    from rclpy.serialization import serialize_message

    live_wire = {t: deserialize(serialize_message(live[t]), m.__msgtype__) for t, m in offline.items()}
    offline_wire = {t: deserialize(serialize(m, m.__msgtype__), m.__msgtype__) for t, m in offline.items()}
    assert _nan_equal(plain(_summary(live_wire)), plain(_summary(offline_wire)))


def _nan_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_nan_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


# --------------------------------------------------------------------------------------- model aliases

def test_short_model_names_are_aliases_of_the_registered_ones():
    from pebal_perception.core.models import canonical_model_name, get_model_spec, list_models, model_aliases

    assert model_aliases() == {"wrn38": "wrn38_deeplabv3plus", "resnet101": "resnet101_deeplabv3plus"}
    assert get_model_spec("wrn38") is get_model_spec("wrn38_deeplabv3plus")
    assert get_model_spec("resnet101").name == "resnet101_deeplabv3plus"
    assert canonical_model_name("espnetv2") == "espnetv2" and canonical_model_name("nope") == "nope"
    assert "wrn38" not in list_models()  # the registry lists canonical names only
    with pytest.raises(KeyError, match="wrn38"):  # the message names the aliases too
        get_model_spec("wrn50")
    # every architecture the params file documents for `model` resolves
    for name in ("espnetv2", "wrn38", "resnet101"):
        get_model_spec(name)


def test_a_checkpoint_made_under_an_alias_stores_the_canonical_name():
    from pebal_perception.core.checkpoint import ModelMeta

    assert ModelMeta.for_architecture("resnet101").architecture == "resnet101_deeplabv3plus"


def test_ego_mask_image_becomes_the_polygon_and_bad_files_are_refused(tmp_path):
    import cv2

    mask = np.zeros((100, 200), np.uint8)
    mask[80:, 20:180] = 255  # a hood along the bottom
    cv2.imwrite(str(tmp_path / "ego.png"), mask)
    settings = initial_settings(resolve_parameters({"ego_mask.image": str(tmp_path / "ego.png")}), -9.0)
    xs, ys = settings.config.ego_mask_polygon[0::2], settings.config.ego_mask_polygon[1::2]
    assert min(ys) == pytest.approx(0.8, abs=0.02) and max(ys) == pytest.approx(0.99, abs=0.02)
    assert min(xs) == pytest.approx(0.1, abs=0.02) and max(xs) == pytest.approx(0.895, abs=0.02)
    explicit = initial_settings(resolve_parameters({"ego_mask.image": str(tmp_path / "ego.png"),
                                                    "ego_mask.polygon": [0.0, 0.9, 1.0, 0.9, 0.5, 1.0]}), -9.0)
    assert explicit.config.ego_mask_polygon == (0.0, 0.9, 1.0, 0.9, 0.5, 1.0)  # the polygon wins
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((10, 10), np.uint8))
    for bad, reason in ((tmp_path / "missing.png", "missing.png"), (tmp_path / "black.png", "no ego pixel")):
        with pytest.raises(ValueError, match=reason):
            initial_settings(resolve_parameters({"ego_mask.image": str(bad)}), -9.0)


def test_calibrated_ego_mask_and_horizon_fill_unset_parameters():
    calibrated = {"ego_mask_polygon": [0.0, 0.8, 1.0, 0.8, 1.0, 1.0, 0.0, 1.0], "horizon_row": 0.45}
    settings = initial_settings(resolve_parameters({}), -9.0, calibrated)
    assert settings.config.ego_mask_polygon == (0.0, 0.8, 1.0, 0.8, 1.0, 1.0, 0.0, 1.0)
    assert settings.config.horizon_row == 0.45
    own = initial_settings(resolve_parameters({"horizon.row": 0.5, "ego_mask.polygon": [0.0, 0.9, 1.0, 0.9, 0.5, 1.0]}),
                           -9.0, calibrated)
    assert own.config.horizon_row == 0.5 and own.config.ego_mask_polygon == (0.0, 0.9, 1.0, 0.9, 0.5, 1.0)
