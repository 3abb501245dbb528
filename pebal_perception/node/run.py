"""Running the detector node as a program: signals, rclpy start-up and shutdown, ``--help`` from the
node's docstring and parameter table, and a fast exit (the launchers ``detector_node`` and
``detector_lifecycle_node`` call :func:`pebal_perception.node.detector_node.main` /
``lifecycle_main``, which come here)."""
from __future__ import annotations

import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions


def run_node(args: list[str] | None = None, lifecycle: bool = False, fast_exit: bool | None = None) -> int:
    """Runs the node until SIGINT/SIGTERM; returns the exit status (0, or 1 after a start-up error).

    As a program (``args`` None, e.g. the ``detector_node`` launcher) the process ends with
    ``os._exit`` once the node, its worker and ROS are shut down: the interpreter's own teardown
    (PyTorch's alone takes over a second) would break the 2 s shutdown budget. ``fast_exit`` forces
    either behaviour. ``lifecycle``: the managed node, which starts unconfigured and is driven through
    its lifecycle services."""
    return _finish(_run(args, lifecycle), args is None if fast_exit is None else fast_exit)


def _finish(status: int, fast_exit: bool) -> int:
    if fast_exit:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    return status


def _run(args: list[str] | None, lifecycle: bool = False) -> int:
    from pebal_perception.node import detector_node
    from pebal_perception.node.detector_node import LIFECYCLE_PROG, PROG, DetectorNode, LifecycleDetectorNode, \
        StartupError

    from pebal_perception.core.settings import help_text, wants_help

    prog = LIFECYCLE_PROG if lifecycle else PROG
    argv = list(sys.argv[1:] if args is None else args[1:])
    if wants_help(argv):
        summary, _, rest = (detector_node.__doc__ or "").partition("\n\n")
        topics = rest.split("\nDiagnostics\n")[0]
        if lifecycle:
            summary = (f"{summary.strip()}\n\nThe managed (lifecycle) variant: it starts unconfigured; "
                       "~/change_state configure loads the model, activate creates the subscriptions and "
                       "publishers, deactivate destroys them, cleanup releases the model.")
        sys.stdout.write(help_text(prog, summary, topics))
        return 0
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    # Our own handlers (rclpy installs none: SignalHandlerOptions.NO): a signal only sets ``stop``,
    # and the loop below shuts the node, its worker and ROS down in order.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # noqa: BLE001 - e.g. malformed --ros-args: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        sys.stderr.write(f"{prog}: error: cannot initialise ROS ({type(exc).__name__}: {first})\n")
        return 1
    node = None
    status = 0
    try:
        try:
            node = LifecycleDetectorNode(stop) if lifecycle else DetectorNode(stop)
        except StartupError as exc:
            sys.stderr.write(f"{prog}: error: {exc}\n")
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        executor.remove_node(node)
    except Exception as exc:  # noqa: BLE001 - one line, no traceback
        sys.stderr.write(f"{prog}: error: {type(exc).__name__}: {exc}\n")
        status = 1
    finally:
        if node is not None:
            try:
                node.stop()
                node.destroy_node()
            except Exception:  # noqa: BLE001
                pass
        try:
            rclpy.try_shutdown()
        except Exception:  # noqa: BLE001
            pass
    return status
