"""One ROS test harness for the tests and the benchmarks: loopback environment, node process, peer.

* ``use_loopback`` / ``child_env``: DDS restricted to this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=
  LOCALHOST``, ``ROS_LOCALHOST_ONLY=1``) on a domain of its own (never the default 0), for this process
  (rclpy reads the variables at init) and every child process, with the large-image Fast DDS profile
  (``pebal_perception.dds.apply_default_profile``: ``FASTDDS_DEFAULT_PROFILES_FILE`` unless already set).
* ``ros_unavailable``: None when rclpy, the project's messages and the installed executables are there,
  else the reason (a test turns it into ``pytest.skip``, a benchmark into a skipped figure).
* ``NodeProcess``: the installed detector node (``$VENV/lib/pebal_perception/detector_node``, the
  executable ``ros2 run`` and the launch file start) as a subprocess with ``--ros-args``
  (``detector_args`` builds them as ``launch/detector.launch.py`` passes them), its output in a log
  file; ``stop()`` sends SIGINT / SIGTERM and returns the exit status (None when it had to be killed).
  ``ChildProcess`` is the same for any other command (e.g. ``pebal-bag play``).
* ``Peer``: a node of this process in an rclpy Context of its own, spun by a background thread, with
  publishers, ``Collector`` s (every message of a topic, kept thread-safely; ``wait`` for one matching a
  predicate) and a parameter client.

Every wait takes a timeout that only keeps a broken run from hanging; nothing here measures time.
rclpy and the message packages are imported inside the functions that need them.
"""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(sys.prefix) / "lib" / "pebal_perception" / "detector_node"
PLAYER = Path(sys.prefix) / "bin" / "pebal-bag"
LOOPBACK_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}
ROS_MODULES = ("rclpy", "sensor_msgs.msg", "diagnostic_msgs.msg", "pebal_perception.msg")
DEFAULT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


def _params_file() -> Path:
    """config/detector.yaml of the source tree, else the installed copy."""
    source = REPO_ROOT / "config" / "detector.yaml"
    if source.is_file():
        return source
    return Path(sys.prefix) / "share" / "pebal_perception" / "config" / "detector.yaml"


PARAMS_FILE = _params_file()


def _per_pixel_params() -> tuple[str, ...]:
    """Node parameters (NAME:=VALUE) that switch off the planner-facing tests of core/postprocess.py:
    every node parameter whose product default (PLANNER_DEFAULTS) differs from PostProcessConfig's plain
    per-pixel default is set back to the latter, and persistence over frames is off. The obstacle mask
    is then score > threshold (with the ROI, drivable area and minimum area as each test sets them: those
    two are left to the tests), the same per frame as PostProcessConfig's defaults. Derived, so that a new
    post-processing rule cannot be missed here. For tests about something else (transport, QoS,
    parameters, bags) that recompute the outputs per frame."""
    import math
    from dataclasses import fields

    from pebal_perception.core.postprocess_config import PLANNER_DEFAULTS, PostProcessConfig
    from pebal_perception.core.settings import CONFIG_PARAMETERS

    plain = {f.name: f.default for f in fields(PostProcessConfig)}
    out = []
    for name, field in CONFIG_PARAMETERS.items():
        if field not in PLANNER_DEFAULTS or field in ("restrict_to_drivable", "min_obstacle_area"):
            continue
        value, default = plain[field], PLANNER_DEFAULTS[field]
        if isinstance(value, float) and math.isnan(value):
            out.append(f"{name}:=.nan")
        elif value != default:
            out.append(f"{name}:={value!r}")
    return (*out, "tracking.enabled:=false")


PER_PIXEL_PARAMS = _per_pixel_params()


# ------------------------------------------------------------------------------------------ environment

def use_loopback(domain_id: str | int | None = None) -> dict[str, str]:
    """Restricts DDS to this machine for this process and every child it starts, and returns the ROS
    variables set. ``ROS_DOMAIN_ID``: ``domain_id`` when given, else the one already set unless it is
    empty or the default 0, else one derived from the pid (1..100, safe on every DDS port layout)."""
    env = dict(LOOPBACK_ENV)
    current = os.environ.get("ROS_DOMAIN_ID", "")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    elif current in ("", "0"):
        env["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
    else:
        env["ROS_DOMAIN_ID"] = current
    os.environ.update(env)
    from pebal_perception.dds import PROFILE_VARIABLE, apply_default_profile

    if apply_default_profile() is not None:  # large frames intact (the caller's own profile is kept)
        env[PROFILE_VARIABLE] = os.environ[PROFILE_VARIABLE]
    return env


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ROS child process: this process's, loopback only (``use_loopback``),
    unbuffered Python output, then ``extra``."""
    env = dict(os.environ)
    env.update(use_loopback())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def ros_unavailable(modules: Iterable[str] = ROS_MODULES,
                    executables: Iterable[Path | str] = (LAUNCHER,)) -> str | None:
    """None when every module imports and every executable is installed; else why not (one line)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
            return f"node not available: {module} does not import ({type(exc).__name__}: {exc})"
    for path in executables:
        if not Path(path).exists():
            return f"node not available: no {Path(path).name} at {path} (run make setup)"
    return None


def wait_for(condition: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S, interval: float = 0.1) -> Any:
    """Calls ``condition`` until it returns something truthy and returns that; after ``timeout`` (which
    only keeps a broken run from hanging) its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- processes

def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux kill the child when this process ends, however it ends (a crashed
    or killed test run must not leave nodes of about a gigabyte behind), or None where that is not
    available. Only from the main thread: the kernel sends the signal when the *thread* that started the
    child ends, and a helper thread may end long before its child should."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: nothing to look up after fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before the request was made
            os._exit(1)

    return preexec


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ChildProcess:
    """A command run as a child process (``child_env``), its output in ``log_path`` (stderr too unless
    ``stderr_path`` is given); it is killed when the test process ends (:func:`_die_with_parent`). Its
    stdin is closed, or with ``stdin_pipe`` a pipe that ``close_stdin()`` closes (for a child that stops
    at end of input)."""

    def __init__(self, cmd: Sequence[str | Path], log_path: Path, *, stderr_path: Path | None = None,
                 extra_env: Mapping[str, str] | None = None, cwd: Path | None = None, stdin_pipe: bool = False):
        self.cmd = [str(part) for part in cmd]
        self.log_path = Path(log_path)
        self.stderr_path = Path(stderr_path) if stderr_path is not None else None
        self.stop_s: float | None = None  # how long the last stop() took (for reports only)
        self.killed = False
        if cwd is None:
            cwd = REPO_ROOT if (REPO_ROOT / "config").is_dir() else Path.cwd()
        with open(self.log_path, "wb") as out:
            err = open(self.stderr_path, "wb") if self.stderr_path is not None else None
            try:
                self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err if err is not None else subprocess.STDOUT,
                                             stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                             env=child_env(extra_env), cwd=str(cwd),
                                             preexec_fn=_die_with_parent())
            finally:
                if err is not None:
                    err.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or None when it is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:  # the child already went away
                pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.close_stdin()

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Sends ``sig`` and returns the exit status; None when it did not exit within ``timeout`` and
        was killed (``killed`` is then set). A process that already exited returns its status."""
        if self.proc.poll() is not None:
            self.stop_s = 0.0
            return self.proc.returncode
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.kill()
            return None
        finally:
            self.stop_s = time.monotonic() - start
            self.close_stdin()

    def output(self) -> str:
        """Everything it wrote so far (stdout, then stderr when kept apart)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text + self.stderr()

    def stderr(self) -> str:
        """What it wrote to stderr (only kept apart when ``stderr_path`` was given)."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def tail(self, lines: int = 3) -> str:
        """The last ``lines`` lines of the output, joined with `` | `` (for one-line messages)."""
        return " | ".join(self.output()[-2000:].strip().splitlines()[-lines:])

    def __enter__(self) -> "ChildProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def detector_args(*, namespace: str | None = None, checkpoint: Path | str | None = None, device: str | None = "cpu",
                  params: Sequence[str] = (), image_topic: str | None = None, info_topic: str | None = None,
                  extra: Sequence[str] = (), params_file: Path | None = PARAMS_FILE) -> list[str]:
    """The node's ``--ros-args`` as ``launch/detector.launch.py`` passes them: ``--params-file``;
    ``checkpoint`` (``""``: the embedded default model; None: the params file's); ``device``; every
    ``NAME:=VALUE`` of ``params``; raw ``extra`` arguments; the remappings of the camera topics onto
    ``image_topic`` (raw and compressed) / ``info_topic``; the namespace."""
    args: list[str] = ["--params-file", str(params_file)] if params_file is not None else []
    if checkpoint is not None:
        args += ["-p", f"checkpoint:={checkpoint or repr('')}"]
    if device:
        args += ["-p", f"device:={device}"]
    for param in params:
        args += ["-p", param]
    args += [str(a) for a in extra]
    if image_topic:
        args += ["-r", f"image:={image_topic}", "-r", f"image/compressed:={image_topic}/compressed"]
    if info_topic:
        args += ["-r", f"camera_info:={info_topic}"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    return args


def reliable_input_param(image_topic: str) -> str:
    """The ``NAME:=VALUE`` that makes the node's image subscription on ``image_topic`` (as resolved)
    reliable: the standard QoS override parameter."""
    return f"qos_overrides.{image_topic}.subscription.reliability:=reliable"


class NodeProcess(ChildProcess):
    """The installed detector node: ``LAUNCHER --ros-args *ros_args`` (see ``detector_args``). ``log``
    is the log file, or a directory to put a uniquely named one in; ``separate_stderr`` keeps stderr
    in ``<log>.err`` (``stderr()``)."""

    def __init__(self, ros_args: Sequence[str], log: Path, *, separate_stderr: bool = False,
                 extra_env: Mapping[str, str] | None = None, launcher: Path = LAUNCHER):
        log = Path(log)
        if log.is_dir():
            log = log / f"node-{uuid.uuid4().hex[:8]}.log"
        super().__init__([launcher, "--ros-args", *ros_args], log,
                         stderr_path=log.with_suffix(".err") if separate_stderr else None, extra_env=extra_env)


# -------------------------------------------------------------------------------------------------- peer

def reliable_qos(depth: int = 50):
    """A reliable keep-last QoS profile of ``depth``."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


class Collector:
    """Every message it is called with (use it as a subscription callback), with its arrival time
    (monotonic), kept thread-safely."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: list = []
        self._times: list[float] = []

    def __call__(self, msg) -> None:
        with self._cond:
            self._messages.append(msg)
            self._times.append(time.monotonic())
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._messages)

    def snapshot(self, since: int = 0) -> list:
        """A copy of the messages received so far (from index ``since`` on), oldest first."""
        with self._cond:
            return list(self._messages[since:])

    def timed(self) -> list[tuple[float, Any]]:
        """(arrival time, message) of every message so far, oldest first."""
        with self._cond:
            return list(zip(self._times, self._messages))

    def find(self, predicate: Callable[[Any], bool] | None = None, newest: bool = True):
        """The newest (``newest=False``: the oldest) message so far matching ``predicate``, or None."""
        with self._cond:
            messages = reversed(self._messages) if newest else iter(self._messages)
            return next((m for m in messages if predicate is None or predicate(m)), None)

    def wait(self, predicate: Callable[[Any], bool] | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        """The newest message matching ``predicate`` received so far or within ``timeout``; else None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in reversed(self._messages):
                    if predicate is None or predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait_count(self, count: int, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
        """True once at least ``count`` messages arrived (False after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()
            self._times.clear()


def detector_output_types() -> dict[str, Any]:
    """The detector node's output topics (relative to its name) and their message types (its table)."""
    from pebal_perception.node.outputs import OUTPUTS, message_class

    return {t.name: message_class(t.msgtype) for t in OUTPUTS}


def _on_request_outputs() -> tuple[str, ...]:
    from pebal_perception.node.outputs import OUTPUTS

    return tuple(t.name for t in OUTPUTS if t.on_request)


#: Outputs ``detector_outputs`` subscribes to only when asked by name (each costs work per frame).
ON_REQUEST_OUTPUTS = _on_request_outputs()


class Peer:
    """A ROS node of this process in an rclpy Context of its own (loopback only), spun by a background
    thread until ``close()``; callbacks run in that thread."""

    def __init__(self, name: str = "pebal_test_peer", spin_period_s: float = 0.05):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        use_loopback()
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        try:
            self.node = rclpy.create_node(f"{name}_{uuid.uuid4().hex[:6]}", context=self.context)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
        except BaseException:
            self.context.try_shutdown()
            raise
        self.errors: list[BaseException] = []  # what the callbacks raised (the spinning goes on)
        self._outputs: dict[str, dict[str, Collector]] = {}
        self._period = spin_period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=self._period)
            except Exception as exc:  # noqa: BLE001 - a callback failed, or shutting down
                if self._stop.is_set():
                    return
                self.errors.append(exc)

    def subscribe(self, msg_type, topic: str, callback: Callable[[Any], None], qos: Any = 50):
        return self.node.create_subscription(msg_type, topic, callback, qos)

    def collect(self, msg_type, topic: str, qos: Any = 50) -> Collector:
        """A Collector of every message on ``topic`` from now on."""
        collector = Collector()
        collector.subscription = self.subscribe(msg_type, topic, collector, qos)
        return collector

    def publisher(self, msg_type, topic: str, qos: Any = None):
        return self.node.create_publisher(msg_type, topic, qos if qos is not None else reliable_qos())

    def detector_outputs(self, node_name: str, names: Iterable[str] | None = None) -> dict[str, Collector]:
        """Collectors (reliable, depth 50) of the outputs ``names`` (default: all of
        ``detector_output_types`` but the ON_REQUEST_OUTPUTS) of the detector node ``node_name`` (full name, e.g.
        ``/ns/pebal_detector``); each is subscribed on the first call that asks for it."""
        types = detector_output_types()
        wanted = [n for n in types if n not in ON_REQUEST_OUTPUTS] if names is None else list(names)
        cache = self._outputs.setdefault(node_name, {})
        for name in wanted:
            if name not in cache:
                cache[name] = self.collect(types[name], f"{node_name}/{name}", reliable_qos())
        return {name: cache[name] for name in wanted}

    @staticmethod
    def wait_matched(collectors: Iterable[Collector], node: ChildProcess | None = None,
                     timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Waits until every collector's subscription is matched with a publisher (the node's outputs), so
        that a replay started afterwards loses no output to discovery: a player that waits for the node's
        *input* subscription may otherwise send the first frames before the node's output publishers have
        matched this peer (seen on a loaded machine: every output of a short bag lost). AssertionError
        when that does not happen within ``timeout`` s or ``node`` exits."""
        collectors = list(collectors)
        deadline = time.monotonic() + timeout
        while not all(c.subscription.get_publisher_count() > 0 for c in collectors):
            if node is not None and not node.alive():
                raise AssertionError(f"the node exited ({node.returncode}) before its outputs matched:\n"
                                     f"{node.output()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"outputs not matched with a publisher within {timeout:.0f} s")
            time.sleep(0.05)

    def call(self, client, request, timeout: float = DEFAULT_TIMEOUT_S):
        """The reply of a service call (AssertionError when the service or the reply does not come)."""
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(timeout), f"no reply from {client.srv_name}"
        return future.result()

    def set_parameters(self, node_name: str, *params, timeout: float = DEFAULT_TIMEOUT_S) -> list:
        """``rclpy.parameter.Parameter`` s set on ``node_name`` in one request; the SetParametersResults."""
        from rcl_interfaces.srv import SetParameters

        client = self.node.create_client(SetParameters, f"{node_name}/set_parameters")
        try:
            request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in params])
            return list(self.call(client, request, timeout).results)
        finally:
            self.node.destroy_client(client)

    def get_parameter(self, node_name: str, name: str, timeout: float = DEFAULT_TIMEOUT_S):
        """The value of one parameter of ``node_name`` (as a Python value)."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"{node_name}/get_parameters")
        try:
            reply = self.call(client, GetParameters.Request(names=[name]), timeout)
            return parameter_value_to_python(reply.values[0])
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self.executor.shutdown()
        except Exception:  # noqa: BLE001 - best effort while shutting down
            pass
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
