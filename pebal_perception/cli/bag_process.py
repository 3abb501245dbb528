"""``pebal-bag process``: the node's detector step over every image of a bag, written to an output bag
with a ``summary.json``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from pebal_perception.cli.bag_common import PROG, CliError, _Interrupt

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_params_file() -> Path | None:
    from pebal_perception.core.bag import find_msg_dir

    candidates = [REPO_ROOT / "config" / "detector.yaml"]
    msg_dir = find_msg_dir()
    if msg_dir is not None:
        candidates.append(msg_dir.parent / "config" / "detector.yaml")
    return next((p for p in candidates if p.is_file()), None)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def load_parameters(params_file: Path | None, overrides: Sequence[str], node_name: str = "pebal_detector") -> dict:
    """The node's parameters as the node would see them: the defaults of the node's parameter table
    (core/settings.py), then the params file's ``/**`` and ``<node>`` sections, then ``NAME:=VALUE``
    overrides (values parsed as YAML, like rcl does); every value checked against the table (type,
    range, choices) as the node's descriptors check them. Names the table does not know are ignored,
    as the node ignores undeclared overrides."""
    import yaml

    from pebal_perception.core.settings import resolve_parameters

    params: dict[str, Any] = {}
    if params_file is not None:
        try:
            doc = yaml.safe_load(params_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"cannot read params file {params_file}: {str(exc).splitlines()[0]}") from None
        for key, section in doc.items():
            name = str(key).strip("/").split("/")[-1]
            if (key == "/**" or name == node_name) and isinstance(section, dict):
                _flatten("", section.get("ros__parameters", {}), params)
    for item in overrides:
        if ":=" not in item:
            raise CliError(f"--param expects NAME:=VALUE, got {item!r}")
        name, text = item.split(":=", 1)
        try:
            params[name] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            params[name] = text
    try:
        return resolve_parameters(params)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _detector(args: argparse.Namespace, params: dict, on_event=None) -> Any:
    """The node's detector from ``params`` (:func:`load_parameters`), --checkpoint / --model / --device /
    --backend overriding them."""
    from pebal_perception.core.detector import Detector, DetectorError

    values = dict(params)
    for name in ("checkpoint", "model", "device", "backend"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    try:
        return Detector.from_values(values, on_event=on_event)
    except DetectorError as exc:
        raise CliError(str(exc)) from None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(values, q)), 3)


def process(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pebal_perception.core.bag import (AtomicBagWriter, BagError, check_bag_output, deserialize, msg_class,
                                           open_bag, qos_profile, stamp_ns)
    from pebal_perception.core.detector import CameraInfo
    from pebal_perception.core.image_conversion import ImageConverter, ImageRejected
    from pebal_perception.node.outputs import OUTPUTS, MessageClasses, build_output_messages, uint8_array

    image_topic = args.topic
    info_topic = args.camera_info_topic or f"{image_topic.rsplit('/', 1)[0]}/camera_info"
    prefix = "/" + args.prefix.strip("/") if args.prefix.strip("/") else ""
    check_bag_output(args.output, args.overwrite)  # before any work; AtomicBagWriter checks again

    with open_bag(args.bag) as reader:
        reader.require_topics([image_topic])
        image_type = reader.topics()[image_topic]
        if image_type not in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
            raise BagError(f"{args.bag}: topic {image_topic} has type {image_type}, expected "
                           "sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage")
        has_info = reader.topics().get(info_topic) == "sensor_msgs/msg/CameraInfo"
        params_file = args.params_file or _default_params_file()
        params = load_parameters(params_file, args.param)
        tracking_notes: list[str] = []  # as the node: tracking over the bag's frames, per camera stream

        def on_event(kind: str, text: str) -> None:
            if kind == "tracking_forgot":
                tracking_notes.append(text)
            elif kind == "adaptation_unavailable":  # also in summary.json's adaptation status
                print(f"{PROG}: note: {text}", file=sys.stderr)

        detector = _detector(args, params, on_event=on_event)
        engine, config = detector.engine, detector.settings.config
        converter = ImageConverter()
        to_rgb = converter.to_rgb if image_type.endswith("/Image") else converter.compressed_to_rgb

        classes = MessageClasses(  # the node's messages, as rosbags classes
            Image=msg_class("sensor_msgs/msg/Image"), AnomalyResult=msg_class("pebal_perception/msg/AnomalyResult"),
            Obstacle=msg_class("pebal_perception/msg/Obstacle"), Point=msg_class("geometry_msgs/msg/Point"),
            image_data=uint8_array, Time=msg_class("builtin_interfaces/msg/Time"))
        out_qos = [qos_profile(reliable=True, depth=5)]  # the node's output QoS
        written = [t for t in OUTPUTS  # the node's outputs a bag can carry (no markers, no processing time)
                   if (t.default or (t.name == "overlay" and args.overlay)) and getattr(classes, t.needs) is not None]
        outputs = [t.name for t in written]
        topics = {name: f"{prefix}/{name}" for name in outputs}
        stats: dict[str, Any] = {"frames_in": 0, "frames_out": 0, "rejected": {}, "obstacles": 0,
                                 "frames_with_obstacles": 0}
        times: list[float] = []
        infer_times: list[float] = []
        started = time.monotonic()

        with _Interrupt() as stop, AtomicBagWriter(args.output, storage=args.storage,
                                                   overwrite=args.overwrite) as writer:
            for topic in written:
                writer.add_topic(topics[topic.name], topic.msgtype, out_qos)
            wanted = [image_topic] + ([info_topic] if has_info else [])
            for index, (conn, timestamp, data) in enumerate(reader.messages(wanted)):
                if stop.is_set():
                    raise CliError(f"{args.bag}: interrupted; no output written")
                try:
                    msg = deserialize(data, conn.msgtype)
                except Exception as exc:  # noqa: BLE001 - corrupt CDR
                    raise BagError(f"{args.bag}: message {index} on {conn.topic} (t={timestamp} ns) cannot be "
                                   f"decoded as {conn.msgtype} ({type(exc).__name__}: {exc}); no output "
                                   "written".replace("\n", " ")) from None
                if conn.topic == info_topic:
                    detector.set_camera(CameraInfo(k=tuple(msg.k), width=int(msg.width), height=int(msg.height)))
                    continue
                stats["frames_in"] += 1
                received = time.perf_counter()
                try:
                    rgb = to_rgb(msg)
                except ImageRejected as exc:
                    stats["rejected"][exc.reason] = stats["rejected"].get(exc.reason, 0) + 1
                    continue
                step = detector.step(rgb, stamp_ns(msg.header), stream=msg.header.frame_id)
                messages = build_output_messages(rgb, step.semantic, step.score, step.frame, msg.header, classes,
                                                 model_id=detector.model_id, threshold=config.threshold,
                                                 overlay=args.overlay)
                result = messages.pop("result")
                for name, out in messages.items():
                    writer.write_msg(topics[name], timestamp, out)
                elapsed_ms = (time.perf_counter() - received) * 1000.0
                result.processing_time_ms = float(elapsed_ms)
                writer.write_msg(topics["result"], timestamp, result)
                obstacles = result.obstacles
                stats["frames_out"] += 1
                stats["obstacles"] += len(obstacles)
                stats["frames_with_obstacles"] += bool(obstacles)
                times.append(elapsed_ms)
                infer_times.append(step.inference_ms)
            if stats["frames_in"] == 0:
                raise BagError(f"{args.bag}: no messages on {image_topic}")
            status = detector.status()
            summary = {
                "input_bag": str(args.bag), "output_bag": str(args.output), "storage": args.storage,
                "image_topic": image_topic, "camera_info_topic": info_topic if has_info else None,
                "params_file": str(params_file) if params_file else None, "param_overrides": list(args.param),
                "model_id": detector.model_id, "device": str(engine.device), "threshold": float(config.threshold),
                "network_input": None if engine.input_size is None else [engine.input_size[1], engine.input_size[0]],
                **stats, "rejected_total": sum(stats["rejected"].values()),
                "output_topics": {topics[n]: writer.counts[topics[n]] for n in outputs},
                "processing_time_ms": {"mean": round(sum(times) / len(times), 3) if times else None,
                                       "p50": _percentile(times, 50), "p95": _percentile(times, 95)},
                "inference_time_ms": {"p50": _percentile(infer_times, 50), "p95": _percentile(infer_times, 95)},
                "regions_over_cap": status.regions_over_cap,
                "tracking": {**asdict(status.tracking), "notes": tracking_notes[:20]},
                "adaptation": asdict(status.adaptation),
                "wall_s": round(time.monotonic() - started, 3),
            }
            writer.commit(extra_files={"summary.json": json.dumps(summary, indent=1) + "\n"})
    if not args.quiet:
        print(f"{PROG}: wrote {args.output} ({stats['frames_out']} of {stats['frames_in']} frames, "
              f"{stats['obstacles']} obstacles, p50 {summary['processing_time_ms']['p50']} ms/frame); "
              f"summary: {args.output / 'summary.json'}")
    return 0
