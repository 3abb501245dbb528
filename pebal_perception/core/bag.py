"""ROS 2 bags without rosbag2: reading and writing with ``rosbags`` (pure Python, no ROS needed).

* :func:`typestore` - a rosbags typestore (Kilted message definitions) with this package's own
  messages (``pebal_perception/msg/Obstacle``, ``AnomalyResult``) registered from the ``msg/*.msg``
  text (source tree or the installed ``share/pebal_perception/msg``); their RIHS01 type hashes equal
  the ones rosidl generates.
* :func:`open_bag` - opens a bag directory (sqlite3 or mcap) for reading, turning every problem
  (missing, truncated, corrupt, empty) into one :class:`BagError` that names the bag.
* :class:`AtomicBagWriter` - writes a **version 8** bag (readable by rosbag2 on Humble and later;
  QoS profiles in the version-8 format) under a temporary name next to the destination and renames
  it into place only when it is complete, so the destination is never a half-written bag.
* :func:`check_bag_output` - what an output bag may replace: nothing, or (with ``overwrite``) only a
  bag this package wrote: a folder holding exactly ``metadata.yaml``, the storage files it names and
  the writer's summary (``summary.json`` of ``pebal-bag process``, ``footage.json`` of
  ``pebal-bag from-video``, ``drive.json`` of the drive recipe). A user's folder, a recorded bag, a
  device node or a fifo is refused, never deleted.

Timestamps are integers in nanoseconds; :func:`stamp_ns` / :func:`stamp_from_ns` convert headers.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pebal_perception.core.errors import first_line

STORAGES = ("sqlite3", "mcap")
BAG_VERSION = 8
CUSTOM_MSG_PACKAGE = "pebal_perception"


class BagError(Exception):
    """A bag that cannot be read or written; the message names the bag and the problem (one line)."""


# ------------------------------------------------------------------------------------------- typestore

def find_msg_dir() -> Path | None:
    """Directory holding this package's ``*.msg`` files: the source tree's ``msg/`` (next to the
    ``pebal_perception`` package) or an installed ``share/pebal_perception/msg`` (the prefixes on
    ``AMENT_PREFIX_PATH`` and this interpreter's prefix)."""
    candidates = [Path(__file__).resolve().parents[1] / "msg"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [sys.prefix]
    candidates += [Path(p) / "share" / CUSTOM_MSG_PACKAGE / "msg" for p in prefixes]
    for directory in candidates:
        if directory.is_dir() and any(directory.glob("*.msg")):
            return directory
    return None


@functools.lru_cache(maxsize=1)
def typestore():
    """The shared typestore: ROS 2 Kilted standard messages + ``pebal_perception/msg/*``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    msg_dir = find_msg_dir()
    if msg_dir is not None:
        types: dict[str, Any] = {}
        for path in sorted(msg_dir.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{CUSTOM_MSG_PACKAGE}/msg/{path.stem}"))
        store.register(types)
    return store


def serialize(msg: Any, msgtype: str) -> bytes:
    """A rosbags message object -> CDR bytes (identical to rclpy's ``serialize_message``)."""
    return bytes(typestore().serialize_cdr(msg, msgtype))


def deserialize(data: bytes | memoryview, msgtype: str) -> Any:
    return typestore().deserialize_cdr(bytes(data), msgtype)


def msg_class(msgtype: str) -> Any:
    """The rosbags dataclass of ``msgtype`` (e.g. ``sensor_msgs/msg/Image``)."""
    return typestore().types[msgtype]


# ---------------------------------------------------------------------------------------------- stamps

def stamp_ns(header_or_stamp: Any) -> int:
    """``std_msgs/Header`` or ``builtin_interfaces/Time`` (rosbags or rclpy) -> nanoseconds."""
    stamp = getattr(header_or_stamp, "stamp", header_or_stamp)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_from_ns(ns: int) -> Any:
    """Nanoseconds -> a rosbags ``builtin_interfaces/msg/Time``."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return msg_class("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def header(ns: int, frame_id: str = "") -> Any:
    return msg_class("std_msgs/msg/Header")(stamp=stamp_from_ns(ns), frame_id=frame_id)


# ------------------------------------------------------------------------------------------------- QoS

def qos_profile(reliable: bool = True, depth: int = 10, transient_local: bool = False) -> Any:
    """A rosbags ``Qos`` (keep-last ``depth``, default deadline/lifespan/liveliness) for the metadata."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=int(depth),
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


# ---------------------------------------------------------------------------------------------- reading

class BagReader:
    """A bag opened for reading; every failure (also while iterating) raises :class:`BagError`."""

    def __init__(self, path: str | os.PathLike):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        if self.path.is_file():
            raise BagError(f"{self.path}: is a file; give the bag directory (the one with metadata.yaml)")
        if not (self.path / "metadata.yaml").is_file():
            raise BagError(f"{self.path}: not a ROS 2 bag (no metadata.yaml)")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - ReaderError, sqlite/mcap errors, YAML errors, ...
            raise BagError(f"{self.path}: cannot open bag ({first_line(exc, with_type=True)})") from None
        try:
            self._check_storage_files()
        except BagError:
            self.close()
            raise

    def _check_storage_files(self) -> None:
        for path in getattr(self._reader, "paths", []):
            if not Path(path).is_file():
                raise BagError(f"{self.path}: storage file {Path(path).name} is missing")
            if Path(path).stat().st_size == 0:
                raise BagError(f"{self.path}: storage file {Path(path).name} is empty")

    @property
    def connections(self) -> list[Any]:
        return list(self._reader.connections)

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    def require_topics(self, topics: Iterable[str]) -> None:
        have = self.topics()
        missing = [t for t in topics if t not in have]
        if missing:
            listed = ", ".join(sorted(have)) or "none"
            raise BagError(f"{self.path}: no topic {', '.join(missing)} in the bag (topics: {listed})")

    def messages(self, topics: Sequence[str] | None = None) -> Iterator[tuple[Any, int, bytes]]:
        """(connection, timestamp ns, raw CDR bytes) in timestamp order, optionally only ``topics``."""
        conns = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if not conns:
            return
        count = 0
        iterator = self._reader.messages(connections=conns)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - truncated / corrupt storage
                raise BagError(f"{self.path}: corrupt or truncated bag after {count} message(s) "
                               f"({first_line(exc, with_type=True)})") from None
            count += 1
            conn, timestamp, data = item
            yield conn, int(timestamp), bytes(data)

    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_bag(path: str | os.PathLike, require_messages: bool = True) -> BagReader:
    """Opens a bag for reading; an empty bag (no messages) is an error unless ``require_messages`` is False."""
    reader = BagReader(path)
    if require_messages and reader.message_count == 0:
        reader.close()
        raise BagError(f"{reader.path}: the bag is empty (no messages)")
    return reader


def read_all_messages(path: str | os.PathLike) -> dict[str, list[tuple[int, Any]]]:
    """Every message of a bag, deserialised: topic -> [(bag timestamp ns, message), ...] in bag order."""
    out: dict[str, list[tuple[int, Any]]] = {}
    with open_bag(path) as reader:
        for conn, timestamp, data in reader.messages():
            out.setdefault(conn.topic, []).append((timestamp, deserialize(data, conn.msgtype)))
    return out


def qos_of(connection: Any) -> list[Any]:
    """The recorded (offered) QoS profiles of a connection (rosbags ``Qos`` objects; may be empty)."""
    ext = getattr(connection, "ext", None)
    return list(getattr(ext, "offered_qos_profiles", None) or [])


# ---------------------------------------------------------------------------------------------- writing

# Summary files the writers put into their bags, with keys that identify them as ours.
BAG_SUMMARIES = {"summary.json": ("input_bag", "output_bag", "output_topics"),
                 "drive.json": ("frames", "topics", "ground_truth_values"),
                 "footage.json": ("input", "output_bag", "frames", "output_topics")}
_OVERWRITE_RULE = "--overwrite replaces only a bag this tool wrote"


def _bag_files(path: Path, summary: str) -> tuple[list[str], str | None]:
    """(names of the files of the bag at folder ``path``, None) if it is exactly a bag written with
    ``summary`` (or an empty folder), else ([], what is there)."""
    import json

    import yaml

    from pebal_perception.core.io import describe_path

    names = sorted(os.listdir(path))
    if not names:
        return [], None  # an empty folder: nothing to lose
    odd = [n for n in names if (path / n).is_symlink() or not (path / n).is_file()]
    if odd:
        return [], f"is a folder holding {odd[0]} ({describe_path(path / odd[0])}), not a bag"
    if "metadata.yaml" not in names:
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return [], f"is a folder holding {', '.join(names[:3])}{more}, not a bag"
    try:
        info = (yaml.safe_load((path / "metadata.yaml").read_text()) or {})["rosbag2_bagfile_information"]
        storage = {str(f) for f in info.get("relative_file_paths") or []}
    except Exception:  # noqa: BLE001 - unreadable or unexpected metadata: not a bag of ours
        return [], "is a folder whose metadata.yaml is not rosbag2 metadata, not a bag"
    extra = [n for n in names if n not in storage | {"metadata.yaml", summary}]
    if extra:
        return [], f"is a bag holding {', '.join(extra[:3])} besides its own files"
    if summary not in names:
        return [], f"is a bag without the {summary} this tool writes (a recorded bag?)"
    try:
        doc = json.loads((path / summary).read_text())
    except (OSError, ValueError):
        doc = None
    if not (isinstance(doc, dict) and set(BAG_SUMMARIES.get(summary, ())) <= doc.keys()):
        return [], f"is a bag whose {summary} is not this tool's"
    return names, None


def check_bag_output(path: str | os.PathLike, overwrite: bool = False, summary: str = "summary.json") -> list[str]:
    """Checks that a bag may be written at ``path``; returns the names of the files of the bag that
    will be replaced ([] when there is none). Nothing may be there; with ``overwrite``, a bag written
    by this package's writer with ``summary`` (a folder holding exactly ``metadata.yaml``, the storage
    files it names and ``summary``) or an empty folder. Anything else raises :class:`BagError`, one
    line ``PATH: what is there``; nothing is touched."""
    from pebal_perception.core.io import FolderLayout, OutputPathError, check_output_folder, describe_path

    path = Path(path)
    what = describe_path(path)
    if what is None:
        try:
            check_output_folder(path, FolderLayout("pebal-bag"))  # e.g. a file where a parent folder goes
        except OutputPathError as exc:
            raise BagError(str(exc)) from None
        return []
    if not overwrite:
        raise BagError(f"{path}: output exists already ({what}); choose another path ({_OVERWRITE_RULE})")
    if what != "a folder":
        raise BagError(f"{path}: is {what}, not a bag folder; {_OVERWRITE_RULE}")
    names, problem = _bag_files(path, summary)
    if problem:
        raise BagError(f"{path}: {problem}; {_OVERWRITE_RULE}")
    return names


def storage_plugin(name: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    if name not in STORAGES:
        raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {name!r}")
    return StoragePlugin.SQLITE3 if name == "sqlite3" else StoragePlugin.MCAP


class AtomicBagWriter:
    """Writes a version-8 bag at ``path``, atomically.

    The bag is written as ``<parent>/.<name>.partial-XXXX/<name>`` (so its storage file already has
    its final name, ``<name>.db3`` / ``<name>.mcap``) and renamed to ``path`` by :meth:`commit`. On
    :meth:`abort` (or an exception inside ``with``) the partial directory is removed: ``path`` is
    either absent or a complete bag. What may be at ``path`` is :func:`check_bag_output`'s rule
    (checked here and again at commit): nothing, or with ``overwrite`` a bag this writer wrote with
    ``summary`` among the ``extra_files`` of :meth:`commit`; it is then replaced only at commit time.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "sqlite3", overwrite: bool = False,
                 summary: str = "summary.json"):
        import tempfile

        from rosbags.rosbag2 import Writer

        self.path = Path(path)
        self.overwrite, self.summary = overwrite, summary
        check_bag_output(self.path, overwrite, summary)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        self.storage = storage
        self._writer = Writer(self._partial / self.path.name, version=BAG_VERSION,
                              storage_plugin=storage_plugin(storage))
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._done = False

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Any] | None = None) -> None:
        """Registers a topic (default QoS: reliable, keep-last 10, volatile)."""
        if topic in self._connections:
            return
        profiles = list(qos) if qos is not None else [qos_profile()]
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=profiles)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        self._writer.write(self._connections[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def write_msg(self, topic: str, timestamp_ns: int, msg: Any) -> None:
        conn = self._connections[topic]
        self.write(topic, timestamp_ns, serialize(msg, conn.msgtype))

    @property
    def partial_dir(self) -> Path:
        return self._partial

    def commit(self, extra_files: dict[str, str] | None = None) -> Path:
        """Closes the bag, adds ``extra_files`` (name -> text) inside it and renames it into place."""
        if self._done:
            return self.path
        self._writer.close()
        staged = self._partial / self.path.name
        for name, text in (extra_files or {}).items():
            (staged / name).write_text(text)
        old_files = check_bag_output(self.path, self.overwrite, self.summary)  # again: time has passed
        old = self._partial / ".replaced"
        if os.path.lexists(self.path):
            os.rename(self.path, old)  # the checked bag (or empty folder), moved aside
        os.replace(staged, self.path)
        self._done = True
        if os.path.lexists(old):
            for name in old_files:  # only the files that were checked to be the old bag's
                (old / name).unlink(missing_ok=True)
            try:
                old.rmdir()
            except OSError:  # something appeared in it since the check: left in the partial folder
                return self.path
        shutil.rmtree(self._partial, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            if getattr(self._writer, "storage", None) is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(self._partial, ignore_errors=True)

    def __enter__(self) -> "AtomicBagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()


# --------------------------------------------------------------------------------------- image messages

def image_msg(fields: dict[str, Any], stamp: int | Any, frame_id: str = "") -> Any:
    """``sensor_msgs/msg/Image`` (rosbags) from :func:`~pebal_perception.core.image_conversion.rgb_to_image_fields`
    output; ``stamp`` is nanoseconds or a header to copy."""
    import numpy as np

    hdr = header(stamp, frame_id) if isinstance(stamp, int) else stamp
    return msg_class("sensor_msgs/msg/Image")(
        header=hdr, height=int(fields["height"]), width=int(fields["width"]), encoding=str(fields["encoding"]),
        is_bigendian=int(fields["is_bigendian"]), step=int(fields["step"]),
        data=np.frombuffer(fields["data"], dtype=np.uint8))
