"""``pebal-bag play``: publish a bag's raw serialized messages at their recorded times, optionally with
the bag's time on ``/clock``."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from pebal_perception.cli.bag_common import PROG, CliError, _Interrupt

# The only message packages `play` publishes. A bag's type strings are data: they select one of
# these modules' classes and are never turned into an import of their own.
KNOWN_MESSAGE_PACKAGES = ("builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "pebal_perception",
                          "rcl_interfaces", "rosgraph_msgs", "sensor_msgs", "std_msgs")


def resolve_message_type(msgtype: str) -> Any | None:
    """The rclpy class of ``msgtype`` (``pkg/msg/Name``) from :data:`KNOWN_MESSAGE_PACKAGES`, or None
    when the string names anything else (unknown package, not a message, malformed)."""
    import importlib

    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg" or parts[0] not in KNOWN_MESSAGE_PACKAGES:
        return None
    package, _, name = parts
    if not name.isidentifier() or name.startswith("_"):
        return None
    try:
        module = importlib.import_module(f"{package}.msg")  # one of the fixed names above
    except ImportError:
        return None
    cls = getattr(module, name, None)
    # Generated message classes carry their type support; anything else in the module is not a message.
    if not isinstance(cls, type) or not hasattr(cls, "_TYPE_SUPPORT"):
        return None
    return cls


def _rclpy_qos(profiles: list[Any], force_reliable: bool = False) -> Any:
    """rclpy QoSProfile matching the recorded (offered) profiles; reliable keep-last 10 if none; reliable
    whatever was recorded with ``force_reliable`` (``play --reliable``)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = force_reliable or all(getattr(p.reliability, "name", "") != "BEST_EFFORT" for p in profiles)
    latched = bool(profiles) and all(getattr(p.durability, "name", "") == "TRANSIENT_LOCAL" for p in profiles)
    depth = max([10] + [int(p.depth) for p in profiles if int(p.depth) > 0])
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class _BagClock:
    """``/clock`` for ``play --clock``: publishes the bag's time every ``1/hz`` s of wall time from
    within the player's waits (:meth:`wait_until`), so also between messages and before the first one."""

    def __init__(self, node: Any, hz: float, rate: float):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        # rosbag2's player uses rclcpp::ClockQoS (best effort, keep last 1, volatile), what rclpy's and
        # rclcpp's time sources subscribe with: only the newest time matters, and a lost sample is
        # replaced by the next one 1/hz later instead of being resent late.
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)
        self._pub = node.create_publisher(Clock, "/clock", qos)
        self._msg = Clock()
        self._period = 1.0 / hz
        self._rate = rate
        self._next_tick = time.monotonic()
        self.hold(0)

    def hold(self, bag_ns: int) -> None:
        """From now on the clock stands at ``bag_ns``."""
        self._origin, self._wall, self._cap = bag_ns, None, bag_ns

    def follow(self, bag_ns: int, wall: float, cap_ns: int) -> None:
        """The clock runs from ``bag_ns`` at monotonic time ``wall`` at ``rate``, up to ``cap_ns`` (the
        next message's time: the clock never runs ahead of what has been published)."""
        self._origin, self._wall, self._cap = bag_ns, wall, cap_ns

    def now_ns(self) -> int:
        if self._wall is None:
            return self._origin
        return min(self._cap, self._origin + int((time.monotonic() - self._wall) * self._rate * 1e9))

    def wait_until(self, deadline: float, stop: threading.Event) -> bool:
        """``frame_sources.wait_until`` that publishes the clock at every tick on the way."""
        from pebal_perception.core.frame_sources import wait_until

        while True:
            now = time.monotonic()
            if now >= self._next_tick:
                ns = self.now_ns()
                self._msg.clock.sec, self._msg.clock.nanosec = divmod(ns, 1_000_000_000)
                self._pub.publish(self._msg)
                self._next_tick = max(self._next_tick + self._period, now)  # no burst after a stall
            if not wait_until(min(deadline, self._next_tick), stop):
                return False
            if time.monotonic() >= deadline:
                return True


def play(args: argparse.Namespace) -> int:
    from pebal_perception.core.bag import open_bag, qos_of
    from pebal_perception.core.frame_sources import wait_until

    remap = dict(args.remap)
    with open_bag(args.bag) as reader:
        conns = reader.connections
        if args.topics:
            reader.require_topics(args.topics)
            conns = [c for c in conns if c.topic in args.topics]
        try:
            import rclpy
            from rclpy.signals import SignalHandlerOptions
        except ImportError as exc:
            raise CliError(f"play needs rclpy (ROS 2): {exc}; run scripts/setup.sh") from None

        from pebal_perception.dds import apply_default_profile

        apply_default_profile()  # raw frames intact over Fast DDS (a user's own profile is kept)
        with _Interrupt() as stop:
            context = rclpy.Context()
            rclpy.init(args=[PROG], context=context, signal_handler_options=SignalHandlerOptions.NO)
            node = None
            try:
                node = rclpy.create_node(f"pebal_bag_player_{os.getpid()}", context=context,
                                         start_parameter_services=False)
                publishers: dict[str, Any] = {}
                skipped: dict[str, str] = {}
                for conn in conns:
                    if conn.topic in publishers or conn.topic in skipped:
                        continue
                    msg_type = resolve_message_type(conn.msgtype)
                    if msg_type is None:
                        skipped[conn.topic] = conn.msgtype
                        sys.stderr.write(f"{PROG}: warning: {args.bag}: skipping {conn.topic}: message type "
                                         f"{conn.msgtype!r} is not one this tool publishes\n")
                        continue
                    publishers[conn.topic] = node.create_publisher(msg_type, remap.get(conn.topic, conn.topic),
                                                                   _rclpy_qos(qos_of(conn), args.reliable))
                if not publishers:
                    raise CliError(f"{args.bag}: no topic to play")
                clock = None
                if args.clock is not None:
                    clock = _BagClock(node, args.clock, args.rate)
                    # The first played message's time from the start, so that the timers of nodes
                    # using sim time run while the player waits for them.
                    messages = reader.messages(list(publishers))
                    clock.hold(next(messages, (None, 0))[1])
                    messages.close()
                wait = clock.wait_until if clock is not None else wait_until
                if args.wait_for_subscribers:
                    deadline = time.monotonic() + args.wait_timeout
                    while not stop.is_set() and time.monotonic() < deadline:
                        if all(p.get_subscription_count() > 0 for p in publishers.values()):
                            break
                        wait(time.monotonic() + 0.05, stop)
                    else:
                        if not stop.is_set():
                            lonely = [p.topic_name for p in publishers.values() if p.get_subscription_count() == 0]
                            sys.stderr.write(f"{PROG}: warning: no subscriber on {', '.join(lonely)} after "
                                             f"{args.wait_timeout:g} s; playing anyway\n")
                if args.delay > 0:
                    wait(time.monotonic() + args.delay, stop)
                if not args.quiet:
                    print(f"{PROG}: playing {args.bag} ({reader.message_count} messages, "
                          f"{len(publishers)} topics) at rate {args.rate:g}{' in a loop' if args.loop else ''}",
                          flush=True)
                published = 0
                while not stop.is_set():
                    start_wall = time.monotonic()
                    first = None
                    for conn, timestamp, data in reader.messages(list(publishers)):
                        if first is None:
                            first = timestamp
                        if clock is not None:
                            clock.follow(first, start_wall, timestamp)
                        if not wait(start_wall + (timestamp - first) / 1e9 / args.rate, stop):
                            break
                        publishers[conn.topic].publish(data)
                        published += 1
                        if clock is not None:
                            clock.hold(timestamp)  # until the next message, or the end: the last time
                    if not args.loop:
                        break
                if not stop.is_set():
                    wait(time.monotonic() + 0.5, stop)  # let reliable deliveries of the last messages finish
                if not args.quiet:
                    unknown = f", skipped {len(skipped)} topics of unknown types" if skipped else ""
                    print(f"{PROG}: published {published} messages{unknown}"
                          f"{' (interrupted)' if stop.is_set() else ''}", flush=True)
            finally:
                if node is not None:
                    node.destroy_node()
                context.try_shutdown()
    return 0
