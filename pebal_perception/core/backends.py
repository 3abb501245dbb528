"""Inference runtimes behind one interface: PyTorch (the reference), OpenVINO, ONNX Runtime, TensorRT.

``backend`` (node parameter, ``--backend`` of the CLIs, :class:`~pebal_perception.core.engine.InferenceEngine`
argument) is one of :data:`BACKENDS`. ``auto`` picks the fastest runtime installed for the device: on
the CPU by measurement (:func:`choose_fastest`: PyTorch, OpenVINO and ONNX Runtime each run a few
frames at the network size, once per machine, CPU model, thread count, size and runtime versions; the
choice is cached), because which one wins depends on the CPU and on the graph (BENCHMARKS.md figure 8);
on CUDA TensorRT when it is installed (the field's reference there: Isaac ROS and Autoware build engines
from ONNX), else PyTorch; a TensorRT engine that cannot be built then falls back to PyTorch, logged.

**TensorRT has not run on a GPU yet**: :class:`TensorRtRunner` (TensorRT 10's Python API) is tested on
the CPU against a stand-in of the ``tensorrt`` module (test_backends.py); its outputs and speed are not
measured (README, BENCHMARKS.md).

The compiled runtimes run a :class:`~pebal_perception.core.frame_graph.FrameGraph` at the network size,
each in the form it runs fastest (its :attr:`Backend.graph_form`):
uint8 frame resized to the network size in, normalisation, network, free energy and argmax in the graph;
the host resizes the frame (PyTorch's uint8 kernel, as the torch path) and brings the maps back to the
image size and smooths them (the same functions as the torch path), so the outputs equal the torch
path's to float rounding at every image size with one graph per network size.

Graphs are cached on disk, keyed by the model's weights digest, the network size, the runtime and its
version and the graph's own version: :mod:`pebal_perception.core.graph_cache` (its rules of trust
there). OpenVINO's ``convert_model`` is never used (it sends usage telemetry by default): the graph goes to
OpenVINO as ONNX, through its reader.

Adding a runtime backend: write its :class:`GraphRunner` (built from a :class:`GraphRequest`, whose
:meth:`~GraphRequest.onnx` gives the cached ONNX of the graph) and register a :class:`Backend` for it at
the end of this module: the name ``backend`` takes, the module the runtime comes in, the device kind it
runs on, its graph form, its builder and one line for the help texts. Everything else reads the
registry: :data:`BACKENDS` (the node parameter's and the CLIs' choices), their help texts
(:func:`help_text`), :func:`resolve_backend`, ``auto`` (on the CPU it measures every installed CPU
runtime; elsewhere it takes the first one registered for the device kind that is installed) and the
engine's device, precision and frame handling. Its tests go to test_backends.py.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .graph_cache import cached

if TYPE_CHECKING:  # torch only when a backend is resolved or built: the CLIs import BACKENDS for --help
    import torch

    from .frame_graph import FrameGraph

BACKENDS: tuple[str, ...] = ("auto",)  # "auto" and the registered names (register_backend keeps it up to date)
GRAPH_VERSION = 3  # bump when FrameGraph's computation changes: old cache entries are then not used
LOG = logging.getLogger("pebal.backends")


class BackendError(ValueError):
    """A backend that cannot run here (not installed, wrong device) or a graph it cannot build."""


@dataclass(frozen=True)
class Backend:
    """One inference runtime, as :func:`resolve_backend`, :func:`build_runner` and the engine see it.

    ``build`` compiles the network-size graph into a :class:`GraphRunner`; ``None`` marks the engine's own
    PyTorch path (the reference), which runs the model eagerly and compiles nothing."""

    name: str  # the value of ``backend``
    module: str  # the Python module the runtime comes in (:func:`installed` looks for it, importing nothing)
    device: str | None  # the device kind it runs on ("cpu", "cuda"); None: any (the torch path)
    description: str  # one line for the help texts
    build: Callable[["GraphRequest"], "GraphRunner"] | None = None
    graph_form: Mapping[str, str] = field(default_factory=dict)  # FrameGraph's prelu/argmax form (default native)
    install_hint: str = "pip install -r requirements.txt"  # how to install it, for the "not installed" error
    read_version: Callable[[], str] | None = None  # default: the module's __version__

    @property
    def compiled(self) -> bool:
        return self.build is not None

    def version(self) -> str:
        """The runtime's version (part of the graph cache keys: a new version builds its graphs afresh)."""
        if self.read_version is not None:
            return self.read_version()
        return importlib.import_module(self.module).__version__


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Registers ``backend`` under its name and lists it in :data:`BACKENDS`. Registered at import of this
    module, it is among the choices of the node parameter and of the CLIs, which take :data:`BACKENDS`
    when they are imported."""
    global BACKENDS
    if backend.name == "auto" or backend.name in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is already registered")
    # the engine hands a compiled graph its frames on the host (cpu) or on the GPU (cuda); only its own
    # torch path runs on any device
    kinds = ("cpu", "cuda") if backend.compiled else (None,)
    if backend.device not in kinds:
        raise ValueError(f"backend {backend.name!r}: device must be one of {kinds}, got {backend.device!r}")
    _REGISTRY[backend.name] = backend
    BACKENDS = ("auto", *_REGISTRY)
    return backend


def get_backend(name: str) -> Backend:
    """The registered backend ``name``; BackendError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}") from None


def registered_backends() -> list[Backend]:
    """The registered backends, in registration order (the order auto tries them in)."""
    return list(_REGISTRY.values())


def installed(name: str) -> bool:
    """Whether the runtime of backend ``name`` (or the module ``name``) can be imported, without importing it."""
    backend = _REGISTRY.get(name)
    return importlib.util.find_spec(backend.module if backend else name) is not None


def runs_on(name: str, device_type: str) -> bool:
    """Whether backend ``name`` (as :func:`resolve_backend` gave it) can run on a ``device_type`` device."""
    if name == "auto":  # resolve_backend leaves auto only on the CPU, to be measured among the CPU runtimes
        return device_type == "cpu"
    device = get_backend(name).device
    return device is None or device == device_type


# Why a backend cannot run on the device it was asked for, per device kind it needs.
_WRONG_DEVICE = {
    "cuda": "backend {name} needs a CUDA device; device is {device} (use backend auto)",
    "cpu": "backend {name} runs on the CPU here; device is {device} (use backend torch or auto there)",
}


def resolve_backend(name: str, device: "torch.device | str") -> str:
    """The backend ``name`` (one of :data:`BACKENDS`) stands for on ``device``; BackendError when an
    explicitly requested one cannot run there."""
    import torch

    name = (name or "auto").strip().lower()
    backend = None if name == "auto" else get_backend(name)  # BackendError for a name not registered
    device_type = torch.device(device).type
    if backend is None:
        candidates = compiled_runtimes(device_type)
        if device_type == "cpu":  # measured by the engine (choose_fastest): the winner depends on the CPU
            return "auto" if candidates else "torch"
        # elsewhere the first registered (building every engine to time it would take minutes); the engine
        # falls back to torch when its graph cannot be built
        return candidates[0] if candidates else "torch"
    if not runs_on(name, device_type):
        raise BackendError(_WRONG_DEVICE[backend.device].format(name=name, device=device_type))
    if not installed(name):
        raise BackendError(f"backend {name} is not installed ({backend.install_hint})")
    return name


def compiled_runtimes(device_type: str = "cpu") -> list[str]:
    """The compiled runtimes installed here for ``device_type`` devices, in the order they are tried."""
    return [name for name, backend in _REGISTRY.items()
            if backend.compiled and backend.device == device_type and installed(name)]


def help_text() -> str:
    """What each value of ``backend`` means, for the node parameter's description and ``--backend``."""
    def listed(names: list[str]) -> str:
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"

    compiled = [b for b in _REGISTRY.values() if b.compiled]
    auto = [f"on the CPU measured among {listed(['torch', *(b.name for b in compiled if b.device == 'cpu')])} "
            "once per machine and network size, cached"]
    for device in dict.fromkeys(b.device for b in compiled if b.device != "cpu"):
        names = [b.name for b in compiled if b.device == device]
        first = names[0] if len(names) == 1 else f"the first installed of {', '.join(names)}"
        auto.append(f"on {device.upper()} {first} when installed, else torch")
    return ", ".join([f"auto (the fastest installed for the device: {'; '.join(auto)})",
                      *(f"{b.name} ({b.description})" for b in _REGISTRY.values())])


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else the platform's processor string)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def choose_fastest(run: Callable[[str], Any], names: list[str], key: dict[str, Any], rounds: int = 3,
                   budget_s: float = 20.0) -> dict[str, Any]:
    """``{"backend": name, "ms": {name: median ms}}``: the fastest of ``names``, ``run(name)`` scoring one
    frame, or the choice cached under ``key`` (the CPU, threads, network size, runtime versions): measured
    once per machine, so a cached choice builds nothing for the others. Timed interleaved: one untimed call
    each (it builds the graph; a runtime whose graph cannot be built, ValueError, is left out, logged), then
    up to ``rounds`` rounds in rotated order, fewer when the untimed calls say they would take longer than
    ``budget_s`` (a large model on a small CPU takes seconds per frame). A cached choice that is not one of
    :func:`check_choice`'s shape is reported and measured again."""
    import statistics

    def measure() -> bytes:
        LOG.info("backend auto: measuring %s (once per machine and network size)", ", ".join(names))
        usable = []
        t0 = time.perf_counter()
        for name in names:
            try:
                run(name)
            except ValueError as exc:
                LOG.warning("backend auto: leaving %s out: %s", name, exc)
                continue
            usable.append(name)
        per_round = time.perf_counter() - t0
        times: dict[str, list[float]] = {name: [] for name in usable}
        rounds_here = max(1, min(rounds, int(budget_s / max(per_round, 1e-6))))
        for r in range(rounds_here):
            for name in usable[r % len(usable):] + usable[:r % len(usable)]:
                t0 = time.perf_counter()
                run(name)
                times[name].append((time.perf_counter() - t0) * 1e3)
        ms = {name: round(float(statistics.median(v)), 2) for name, v in times.items()}
        return json.dumps({"backend": min(ms, key=ms.get), "ms": ms}).encode()

    return json.loads(cached({**key, "kind": "auto-choice"}, ".choice", measure,
                              validate=lambda data: check_choice(data, names)))


def check_choice(data: bytes, names: list[str]) -> None:
    """ValueError unless ``data`` is a choice of :func:`choose_fastest` among ``names``: a JSON object of
    exactly ``backend`` (one of ``names``) and ``ms`` (finite non-negative milliseconds per backend, named
    from ``names``), the backend being the fastest of them."""
    try:
        choice = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(choice, dict) or set(choice) != {"backend", "ms"}:
        raise ValueError("not an object of backend and ms")
    backend, ms = choice["backend"], choice["ms"]
    if not isinstance(ms, dict) or not ms or not set(ms) <= set(names):
        raise ValueError(f"ms must time some of {', '.join(names)}")
    for value in ms.values():  # bool is an int to Python, but no timing
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"ms must be milliseconds, got {value!r}")
    if not isinstance(backend, str) or backend not in ms:
        raise ValueError(f"backend must be one of the timed {', '.join(ms)}")
    if ms[backend] != min(ms.values()):
        raise ValueError(f"backend {backend} is not the fastest of its own timings")


def runtime_version(name: str) -> str:
    """The version of backend ``name``'s runtime."""
    return get_backend(name).version()


def weights_digest(model: "torch.nn.Module") -> str:
    """SHA-256 over the model's parameters and buffers (names, shapes, dtypes, values)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():  # flattened first: a channels-last weight's last stride need not be 1
            digest.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def refuse_external_data(onnx: bytes) -> None:
    """BackendError when the ONNX model ``onnx`` takes tensors from external data files: their paths let
    a graph read any file the process can (into the maps it publishes and the compiled blob it caches).
    Checked with the ``onnx`` package; without it the check is skipped: the graphs handed to the runtimes
    are then ones exported here in memory (which never use external data) or signed cache entries."""
    try:
        from onnx import ModelProto
    except ImportError:
        return
    try:
        model = ModelProto.FromString(onnx)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, whatever its module
        raise BackendError(f"the graph is not an ONNX model ({type(exc).__name__}: {exc})") from None
    if _has_external_tensor(model):
        raise BackendError("the ONNX graph takes tensors from external data files, which pebal refuses "
                           "(their paths could name any file)")


def _has_external_tensor(message: Any) -> bool:
    """Whether any TensorProto within ``message`` (initializers, attributes, subgraphs, functions, sparse
    tensors) is stored as external data."""
    stack = [message]
    while stack:
        current = stack.pop()
        if current.DESCRIPTOR.name == "TensorProto":  # no tensors within; its raw bytes are not touched
            if current.data_location == 1 or len(current.external_data):  # 1: TensorProto.EXTERNAL
                return True
            continue
        for descriptor, value in current.ListFields():
            if descriptor.message_type is not None:
                stack.extend([value] if hasattr(value, "ListFields") else value)
    return False


class GraphRunner:
    """A compiled :class:`FrameGraph` at the network size: :meth:`__call__` takes a ``1 x h x w x 3`` frame
    and returns (semantic ``1 x h x w`` uint8, energy ``1 x h x w`` float32), where the runtime runs: a CPU
    runtime takes and gives host arrays (the frame uint8), a CUDA one tensors on the engine's device (the
    frame as ``preprocess.resize_batch`` gives it there)."""

    def __call__(self, rgb: Any) -> tuple[Any, Any]:
        raise NotImplementedError


@dataclass
class GraphRequest:
    """What a backend's builder gets: the model's graph at ``network_hw`` in the backend's ``form``, the
    settings it runs with, and ``key``, the cache key of that graph (a runtime adds what its compiled form
    depends on: its version, the threads, the GPU, ...)."""

    model: "torch.nn.Module"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    network_hw: tuple[int, int]
    form: dict[str, Any]  # FrameGraph keyword arguments: the graph form and the score
    threads: int
    precision: str
    device: "torch.device | str | None"
    key: dict[str, Any]

    def frame_graph(self) -> "FrameGraph":
        """The graph as a module (built afresh: the OpenVINO form copies the model)."""
        from .frame_graph import FrameGraph

        return FrameGraph(self.model, self.mean, self.std, self.network_hw, self.network_hw, smoothing=False,
                          **self.form).eval()

    def onnx(self, float_input: bool = False) -> bytes:
        """The graph as ONNX, from the disk cache when it holds it (exported only on a miss). ``float_input``:
        a float32 frame in, as a device's resize gives it, instead of the host's uint8."""
        import torch

        from . import frame_graph

        kind, dtype = ("onnx-float-input", torch.float32) if float_input else ("onnx", torch.uint8)
        return cached({**self.key, "kind": kind, "torch": torch.__version__}, ".onnx",
                      lambda: frame_graph.onnx_bytes(self.frame_graph(), input_dtype=dtype))


class _SignalStack(ctypes.Structure):
    """glibc's ``stack_t`` (``sigaltstack``)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


class KeepSignalStack:
    """Restores the calling thread's alternate signal stack (``sigaltstack``) on exit from the block.

    OpenVINO's CPU plugin installs a signal stack of its own on the thread that compiles a model and puts
    back, when its ``Core`` goes, the one it found. With two cores alive at once the second one records the
    first one's stack, which the first frees on its way out: the thread is then left with a freed signal
    stack, and the next signal handled on it (Python installs its handlers with ``SA_ONSTACK``: SIGINT,
    SIGCHLD of a DataLoader, ...) kills the process with SIGSEGV. Putting the thread's own stack back right
    after each compile means every core records a stack that stays valid. Linux/glibc only; elsewhere a
    no-op."""

    def __enter__(self) -> "KeepSignalStack":
        self._saved = None
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            saved = _SignalStack()
            if self._libc.sigaltstack(None, ctypes.byref(saved)) == 0:
                self._saved = saved
        except (OSError, AttributeError):  # not glibc: nothing to keep
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is None:
            return
        current = _SignalStack()
        if self._libc.sigaltstack(None, ctypes.byref(current)) == 0 and (
                current.ss_sp, current.ss_flags, current.ss_size) == (
                self._saved.ss_sp, self._saved.ss_flags, self._saved.ss_size):
            return
        restore = _SignalStack(self._saved.ss_sp, self._saved.ss_flags & 2, self._saved.ss_size)  # SS_DISABLE
        if self._libc.sigaltstack(ctypes.byref(restore), None) != 0:
            LOG.warning("could not restore this thread's signal stack (errno %d)", ctypes.get_errno())


class OpenVinoRunner(GraphRunner):
    def __init__(self, onnx: bytes, threads: int, compiled_key: dict[str, Any] | None = None):
        with KeepSignalStack():  # see KeepSignalStack: OpenVINO replaces the thread's signal stack
            self._build(onnx, threads, compiled_key)

    def _build(self, onnx: bytes, threads: int, compiled_key: dict[str, Any] | None) -> None:
        import openvino

        refuse_external_data(onnx)
        core = openvino.Core()
        # f32 exactly: OpenVINO would otherwise pick bf16 on CPUs that have it (outputs off by ~1e-2).
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads),
                  "PERFORMANCE_HINT": "LATENCY"}
        model = core.read_model(model=onnx)
        compiled = None
        if compiled_key is not None:
            def export() -> bytes:
                exported = core.compile_model(model, "CPU", config).export_model()
                return exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)

            blob = cached(compiled_key, ".ovblob", export)
            try:
                compiled = core.import_model(blob, "CPU", config)
            except Exception as exc:  # noqa: BLE001 - a blob of another build: compile afresh
                LOG.warning("cached OpenVINO blob not importable (%s): compiling", exc)
        self._compiled = compiled or core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._request.infer({0: rgb})
        return (self._request.get_output_tensor(0).data.copy(), self._request.get_output_tensor(1).data.copy())


class OnnxRuntimeRunner(GraphRunner):
    def __init__(self, onnx: bytes, threads: int):
        import onnxruntime

        refuse_external_data(onnx)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        semantic, energy = self._session.run(None, {self._input: rgb})
        return semantic, energy


class TensorRtRunner(GraphRunner):
    """A TensorRT engine of the network-size graph on one CUDA device. :meth:`__call__` takes a
    ``1 x h x w x 3`` frame (a tensor; float32 on the device, as ``preprocess.resize_batch`` gives there)
    and returns device tensors (semantic ``1 x h x w`` uint8, energy ``1 x h x w`` float32), queued on the
    current stream. The serialised engine (plan) is cached under ``engine_key``, which names the GPU, its
    compute capability, TensorRT's version and the precision; a plan this TensorRT cannot load is built
    again. fp16/bf16 set TensorRT's builder flag (it then picks per layer; see BENCHMARKS.md figure 9 for
    what half precision changes in the maps)."""

    def __init__(self, onnx: bytes, device: "torch.device | str", precision: str, engine_key: dict[str, Any]):
        import contextlib

        import tensorrt as trt
        import torch

        refuse_external_data(onnx)
        self.device = torch.device(device)
        logger = trt.Logger(trt.Logger.WARNING)

        def build() -> bytes:
            builder = trt.Builder(logger)
            network = builder.create_network(0)  # explicit batch: the only mode of TensorRT 10
            parser = trt.OnnxParser(network, logger)
            if not parser.parse(onnx):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise BackendError(f"TensorRT cannot parse the graph: {errors or 'no reason given'}")
            config = builder.create_builder_config()
            if precision in ("fp16", "bf16"):
                config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise BackendError("TensorRT could not build an engine of the graph (its log above says why)")
            return bytes(plan)

        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            runtime = trt.Runtime(logger)
            plan = cached(engine_key, ".plan", build)
            try:
                engine = runtime.deserialize_cuda_engine(plan)
            except Exception as exc:  # noqa: BLE001 - TensorRT's own error types: built again below
                LOG.warning("cached TensorRT engine not loadable (%s)", exc)
                engine = None
            if engine is None:  # intact, but not loadable by this TensorRT or GPU
                LOG.warning("cached TensorRT engine not loadable here: building it again")
                engine = runtime.deserialize_cuda_engine(build())
            if engine is None:
                raise BackendError("TensorRT cannot load the engine it has just built")
            self._engine = engine
            self._context = engine.create_execution_context()
            dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                      trt.DataType.UINT8: torch.uint8, trt.DataType.INT32: torch.int32,
                      trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
            self._input: str | None = None
            self._outputs: dict[str, torch.Tensor] = {}
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    self._input = name
                    continue
                dtype = engine.get_tensor_dtype(name)
                if dtype not in dtypes:
                    raise BackendError(f"TensorRT engine output {name} has type {dtype}, which pebal cannot take")
                out = torch.empty(tuple(engine.get_tensor_shape(name)), dtype=dtypes[dtype], device=self.device)
                self._outputs[name] = out
                self._context.set_tensor_address(name, out.data_ptr())
        if self._input is None or set(self._outputs) != {"semantic", "score"}:
            raise BackendError(f"TensorRT engine has inputs/outputs {self._input}/{sorted(self._outputs)}, "
                               "expected rgb/[score, semantic]")

    def __call__(self, rgb: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        x = rgb.to(self.device, torch.float32).contiguous()
        self._context.set_tensor_address(self._input, x.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self._context.execute_async_v3(stream):
            raise BackendError("TensorRT failed to run the engine")
        # Copies: the bound output buffers are overwritten by the next frame.
        return self._outputs["semantic"].clone(), self._outputs["score"].clone()


def build_runner(name: str, model: "torch.nn.Module", mean, std, network_hw: tuple[int, int],
                 threads: int | None = None, digest: str | None = None, precision: str = "fp32",
                 device: "torch.device | str | None" = None, score: dict[str, Any] | None = None,
                 road_features: tuple[str, int] | None = None) -> GraphRunner:
    """The compiled network-size graph of ``model`` for the compiled backend ``name``, from the disk cache
    when it holds one (module docstring). ``digest``: the model's :func:`weights_digest` when the caller
    already has it (hashing a large model's weights takes a while). ``threads``: the CPU runtimes' (default
    PyTorch's); ``precision`` and ``device``: a CUDA runtime's (the CPU runtimes run fp32 on the CPU);
    ``score`` and ``road_features``: the anomaly score the graph computes (:class:`FrameGraph`)."""
    import torch

    backend = get_backend(name)
    if not backend.compiled:
        raise BackendError(f"no graph runner for backend {name!r}")
    form = dict(backend.graph_form)
    key = {"graph_version": GRAPH_VERSION, "weights": digest or weights_digest(model), "network_hw": list(network_hw),
           "mean": [float(v) for v in mean], "std": [float(v) for v in std], "outputs": "semantic,energy",
           "form": form, "score": dict(score or {})}
    request = GraphRequest(model, mean, std, tuple(network_hw), {**form, "score": dict(score or {}),
                                                                  "road_features": road_features},
                           threads=torch.get_num_threads() if not threads else int(threads),
                           precision=precision, device=device, key=key)
    try:
        return backend.build(request)
    except BackendError:
        raise
    except Exception as exc:  # export or compile failure: one clear error
        raise BackendError(f"cannot build the {name} graph at {network_hw[1]}x{network_hw[0]}: "
                           f"{type(exc).__name__}: {exc}") from exc


def _build_openvino(request: GraphRequest) -> GraphRunner:
    return OpenVinoRunner(request.onnx(), request.threads, compiled_key={
        **request.key, "kind": "openvino-cpu", "threads": request.threads, "openvino": runtime_version("openvino")})


def _build_onnxruntime(request: GraphRequest) -> GraphRunner:
    return OnnxRuntimeRunner(request.onnx(), request.threads)


def _build_tensorrt(request: GraphRequest) -> GraphRunner:
    import torch

    onnx = request.onnx(float_input=True)  # the device resizes in float32 (preprocess.resize_batch)
    device = torch.device(request.device if request.device is not None else "cuda")
    gpu = (torch.cuda.get_device_name(device), list(torch.cuda.get_device_capability(device))
           ) if device.type == "cuda" else (device.type, [])
    return TensorRtRunner(onnx, device, request.precision, engine_key={
        **request.key, "kind": "tensorrt-engine", "tensorrt": runtime_version("tensorrt"), "gpu": gpu[0],
        "compute_capability": gpu[1], "precision": request.precision})


# The registry. Registration order is the order auto tries them in. The graph forms are the ones each ran
# fastest (ESPNetv2 at 1024x512, fp32, 2 threads, AMD EPYC, BENCHMARKS.md figure 8): OpenVINO 2026.4 went
# from 640 to 390 ms a frame with both rewrites; ONNX Runtime 1.32 was slower with either (its NCHWc
# kernels take PRelu and ArgMax natively).
register_backend(Backend("torch", module="torch", device=None, description="PyTorch, the reference"))
register_backend(Backend("openvino", module="openvino", device="cpu", description="OpenVINO, CPU",
                         build=_build_openvino, graph_form={"prelu": "affine", "argmax": "reduce"}))
register_backend(Backend("onnxruntime", module="onnxruntime", device="cpu", description="ONNX Runtime, CPU",
                         build=_build_onnxruntime, graph_form={"prelu": "native", "argmax": "native"}))
register_backend(Backend(
    "tensorrt", module="tensorrt", device="cuda",
    description="TensorRT, CUDA, at the chosen precision; not yet run on a GPU", build=_build_tensorrt,
    graph_form={"prelu": "native", "argmax": "native"},  # not measured (no GPU lent): TensorRT fuses PReLU
    install_hint="on an NVIDIA machine: pip install -e '.[tensorrt]'; see the README"))
