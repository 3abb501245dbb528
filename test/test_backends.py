"""core/backends.py and core/frame_graph.py: every runtime gives the torch path's outputs, auto picks as
documented, the graph cache is reused, and a stale or corrupt entry is rebuilt; the ONNX export with
smoothing runs in OpenVINO."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pebal_perception.core import backends, frame_graph
from pebal_perception.core.backends import BackendError, resolve_backend
from pebal_perception.core.checkpoint import ModelMeta
from pebal_perception.core.engine import InferenceEngine, infer_maps
from pebal_perception.core.models import create_model

RUNTIMES = [name for name in ("openvino", "onnxruntime") if backends.installed(name)]
NETWORK = (64, 128)


@pytest.fixture(scope="module")
def espnetv2():
    torch.manual_seed(0)
    model = create_model("espnetv2").eval()
    return model, ModelMeta.for_architecture("espnetv2", input_size=list(NETWORK))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEBAL_CACHE_DIR", str(tmp_path / "cache"))


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth scene-like image (random noise would make every class boundary a coin toss)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 9, 3)).astype(np.uint8)
    import cv2

    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("image_hw", [NETWORK, (75, 131), (150, 330)], ids=["network", "enlarge", "shrink"])
def test_runtime_outputs_equal_the_torch_path(espnetv2, backend, image_hw):
    """argmax agreement >= 99.9 %, energy within 1e-3 (fp32), at the network size and resized both ways,
    with and without smoothing."""
    model, meta = espnetv2
    reference = InferenceEngine(model, meta, device="cpu", backend="torch")
    engine = InferenceEngine(model, meta, device="cpu", backend=backend)
    assert engine.backend == backend
    rgb = _frame(*image_hw)
    for smoothing in (True, False):
        sem_ref, score_ref, _ = infer_maps(reference, rgb, smoothing=smoothing)
        sem, score, _ = infer_maps(engine, rgb, smoothing=smoothing)
        assert sem.dtype == np.uint8 and score.dtype == np.float32 and sem.shape == score.shape == image_hw
        assert (sem == sem_ref).mean() >= 0.999
        assert np.abs(score - score_ref).max() <= 1e-3
    batch = engine.infer([rgb, rgb[::-1].copy()])  # a batch goes frame by frame, same results
    assert len(batch) == 2 and (batch[0].semantic == infer_maps(engine, rgb)[0]).all()


def test_whole_frame_graph_runs_in_every_runtime(espnetv2):
    """The FrameGraph with resize, normalisation, energy, argmax, upsampling and smoothing in the graph
    (the export's whole-frame form) equals its eager self in ONNX Runtime and OpenVINO, and the torch path
    within the uint8-resize difference."""
    model, meta = espnetv2
    image_hw = (150, 330)
    graph = frame_graph.FrameGraph(model, meta.mean, meta.std, image_hw, NETWORK).eval()
    rgb = _frame(*image_hw, seed=3)
    with torch.no_grad():
        sem_eager, score_eager = (t[0].numpy() for t in graph(torch.from_numpy(rgb[None])))
    onnx = frame_graph.onnx_bytes(graph)
    outputs = {}
    if backends.installed("onnxruntime"):
        outputs["onnxruntime"] = backends.OnnxRuntimeRunner(onnx, 1)(rgb[None])
    if backends.installed("openvino"):
        outputs["openvino"] = backends.OpenVinoRunner(onnx, 1)(rgb[None])
    if not outputs:
        pytest.skip("neither onnxruntime nor openvino installed")
    for name, (sem, score) in outputs.items():
        assert (sem[0] == sem_eager).mean() >= 0.999, name
        assert np.abs(score[0] - score_eager).max() <= 1e-3, name
    sem_ref, score_ref, _ = infer_maps(InferenceEngine(model, meta, device="cpu"), rgb)
    assert (sem_eager == sem_ref).mean() >= 0.99  # the torch path resizes in uint8 (whole grey levels)
    assert np.abs(score_eager - score_ref).mean() <= 0.05


def test_portable_pieces_equal_the_torch_functions():
    x = torch.randn(2, 1, 9, 13)
    assert torch.equal(frame_graph.reflect_pad(x, 3), F.pad(x, (3, 3, 3, 3), mode="reflect"))
    logits = torch.randn(2, 19, 5, 7) * 30
    assert torch.allclose(frame_graph.portable_free_energy(logits)[:, 0], -torch.logsumexp(logits, 1), atol=1e-5)
    for n_in, n_out, aa in ((37, 16, True), (16, 37, False), (20, 20, False)):
        img = torch.rand(1, 3, 11, n_in) * 255
        idx, w = frame_graph.resize_taps(n_in, n_out, aa)
        ref = F.interpolate(img, size=(11, n_out), mode="bilinear", align_corners=False, antialias=aa)
        assert torch.allclose(frame_graph._resize_axis(img, idx, w, -1), ref, atol=1e-3)
    ramp = torch.arange(16.0).view(1, 1, 1, 16)
    picked = ramp.index_select(3, frame_graph.nearest_exact_indices(16, 37))
    assert torch.equal(picked, F.interpolate(ramp, size=(1, 37), mode="nearest-exact"))


def test_runtime_forms_equal_the_eager_operations(espnetv2):
    """The rewrites of RUNTIME_FORMS and the export's pooling equal PyTorch's operations: adaptive pooling
    with even and uneven bins, PReLU with slopes below 0, in (0, 1) and above 1, argmax with ties."""
    for shape, out in (((1, 10, 48, 96), (32, 64)), ((2, 3, 26, 52), (5, 7)), ((1, 4, 16, 32), (8, 8)),
                       ((3, 17, 9), (5, 4))):
        x = torch.randn(shape)
        assert torch.allclose(frame_graph.pool_by_matrices(x, out), F.adaptive_avg_pool2d(x, out), atol=1e-5)
    model, meta = espnetv2
    model = __import__("copy").deepcopy(model)
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.PReLU):
            module.weight.data.uniform_(-1.0, 2.0)
    affine = frame_graph.with_affine_prelu(model)
    assert not any(isinstance(m, torch.nn.PReLU) for m in affine.modules())
    assert any(isinstance(m, torch.nn.PReLU) for m in model.modules())  # the original is untouched
    x = torch.randn(1, 3, *NETWORK)
    with torch.no_grad():
        assert torch.allclose(affine(x), model(x), atol=1e-4)
    logits = torch.randint(-3, 3, (2, 19, 6, 7)).float()  # many ties: argmax takes the first
    assert torch.equal(frame_graph.argmax_by_reduce(logits), logits.argmax(1, keepdim=True).to(torch.uint8))
    with pytest.raises(ValueError, match="graph form"):
        frame_graph.FrameGraph(model, meta.mean, meta.std, NETWORK, NETWORK, prelu="fused")
    onnx = pytest.importorskip("onnx")
    for name, form in frame_graph.RUNTIME_FORMS.items():
        graph = frame_graph.FrameGraph(model, meta.mean, meta.std, NETWORK, NETWORK, smoothing=False, **form)
        ops = {node.op_type for node in onnx.load_from_string(frame_graph.onnx_bytes(graph)).graph.node}
        assert ("PRelu" in ops) == (form["prelu"] == "native"), name
        assert ("ArgMax" in ops) == (form["argmax"] == "native"), name


def test_auto_measures_on_the_cpu_and_is_torch_elsewhere(espnetv2, tmp_path):
    """auto on the CPU: the fastest of torch and the installed runtimes, measured once and cached (a
    second engine reuses the choice without timing again); on CUDA: TensorRT when installed, else torch."""
    assert resolve_backend("auto", "cpu") == ("auto" if backends.compiled_runtimes() else "torch")
    assert resolve_backend("auto", "cuda") == ("tensorrt" if backends.installed("tensorrt") else "torch")
    model, meta = espnetv2
    engine = InferenceEngine(model, meta, device="cpu", backend="auto")
    if backends.compiled_runtimes():
        assert set(engine.backend_timings) == {"torch", *backends.compiled_runtimes()}
        assert engine.backend == min(engine.backend_timings, key=engine.backend_timings.get)
        choices = list((tmp_path / "cache").glob("*.choice"))
        assert len(choices) == 1
        again = InferenceEngine(model, meta, device="cpu", backend="auto")
        assert again.backend == engine.backend and again.backend_timings == engine.backend_timings
        with pytest.MonkeyPatch.context() as patch:  # a new graph version is measured again
            patch.setattr(backends, "GRAPH_VERSION", backends.GRAPH_VERSION + 1)
            InferenceEngine(model, meta, device="cpu", backend="auto")
        assert len(list((tmp_path / "cache").glob("*.choice"))) == 2
    sem, score, _ = infer_maps(engine, _frame(75, 131))
    sem_ref, score_ref, _ = infer_maps(InferenceEngine(model, meta, device="cpu"), _frame(75, 131))
    assert (sem == sem_ref).mean() >= 0.999 and np.abs(score - score_ref).max() <= 1e-3
    native = InferenceEngine(model, meta, device="cpu", backend="auto", input_size="native")
    assert infer_maps(native, _frame(64, 96))[0].shape == (64, 96) and native.backend != "auto"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(BackendError, match="tensorrt needs a CUDA device"):
        resolve_backend("tensorrt", "cpu")
    if not backends.installed("tensorrt"):
        with pytest.raises(BackendError, match="tensorrt is not installed"):
            resolve_backend("tensorrt", "cuda")
    with pytest.raises(BackendError, match="runs on the CPU"):
        resolve_backend("onnxruntime", "cuda")
    with pytest.raises(BackendError, match="must be one of"):
        resolve_backend("tvm", "cpu")


class _EagerRunner(backends.GraphRunner):
    """A runtime that is PyTorch running the graph it is given: about the least a backend can be."""

    def __init__(self, request: backends.GraphRequest):
        self.graph = request.frame_graph()

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            semantic, energy = self.graph(torch.from_numpy(rgb))
        return semantic.numpy(), energy.numpy()


@pytest.fixture
def eager_backend(monkeypatch):
    """One more backend, registered as backends.py registers its own, for one test; returns its builds."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))  # both restored after the test
    monkeypatch.setattr(backends, "BACKENDS", backends.BACKENDS)
    builds = []

    def build(request):
        builds.append(request)
        return _EagerRunner(request)

    backends.register_backend(backends.Backend("eager", module="torch", device="cpu", build=build,
                                               description="PyTorch running the graph, CPU",
                                               graph_form={"prelu": "affine", "argmax": "reduce"}))
    return builds


def test_one_registration_adds_a_backend(espnetv2, eager_backend):
    """A registered backend is a choice (BACKENDS, help text), resolves on its device only, gets its graph
    form, runs the engine's frames with the torch path's outputs and takes part in auto's measurement."""
    assert backends.BACKENDS[-1] == "eager" and "eager (PyTorch running the graph, CPU)" in backends.help_text()
    assert "and eager once per machine" in backends.help_text()  # auto measures it on the CPU
    assert resolve_backend("eager", "cpu") == "eager" and "eager" in backends.compiled_runtimes()
    with pytest.raises(BackendError, match="eager runs on the CPU"):
        resolve_backend("eager", "cuda")
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend(backends.get_backend("eager"))
    assert frame_graph.RUNTIME_FORMS["eager"] == {"prelu": "affine", "argmax": "reduce"}
    model, meta = espnetv2
    engine = InferenceEngine(model, meta, device="cpu", backend="eager")
    assert engine.backend == "eager" and len(eager_backend) == 1 and engine.runner(NETWORK).graph.argmax_by_reduce
    reference = InferenceEngine(model, meta, device="cpu", backend="torch")
    for image_hw in (NETWORK, (150, 330)):
        rgb = _frame(*image_hw)
        sem, score, _ = infer_maps(engine, rgb)
        sem_ref, score_ref, _ = infer_maps(reference, rgb)
        assert (sem == sem_ref).mean() >= 0.999 and np.abs(score - score_ref).max() <= 1e-3
    assert len(eager_backend) == 1  # one graph per network size
    engine.to_device("cpu")
    assert engine.backend == "eager"
    auto = InferenceEngine(model, meta, device="cpu", backend="auto")
    assert "eager" in auto.backend_timings


@pytest.mark.skipif(not RUNTIMES, reason="no compiled runtime installed")
def test_graph_cache_is_reused_and_a_corrupt_entry_is_rebuilt(espnetv2, tmp_path, monkeypatch, caplog):
    model, meta = espnetv2
    backend = RUNTIMES[-1]
    exports = []
    original = frame_graph.onnx_bytes

    def counting(graph, *args, **kwargs):
        exports.append(graph.network_hw)
        return original(graph, *args, **kwargs)

    monkeypatch.setattr(frame_graph, "onnx_bytes", counting)
    rgb = _frame(*NETWORK)
    first = infer_maps(InferenceEngine(model, meta, device="cpu", backend=backend), rgb)
    assert exports == [NETWORK]
    cache = tmp_path / "cache"
    entries = sorted(p.name for p in cache.iterdir())
    assert any(n.endswith(".onnx") for n in entries) and any(n.endswith(".json") for n in entries)
    InferenceEngine(model, meta, device="cpu", backend=backend)
    assert exports == [NETWORK]  # reused: no second export
    onnx = next(p for p in cache.iterdir() if p.suffix == ".onnx")
    onnx.write_bytes(onnx.read_bytes()[: len(onnx.read_bytes()) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        again = infer_maps(InferenceEngine(model, meta, device="cpu", backend=backend), rgb)
    assert exports == [NETWORK, NETWORK] and "stale or corrupt" in caplog.text
    assert np.array_equal(first[0], again[0]) and np.allclose(first[1], again[1], atol=1e-5)
    other = create_model("espnetv2").eval()  # other weights: another entry, not the first one
    InferenceEngine(other, meta, device="cpu", backend=backend)
    assert len(exports) == 3


def test_unwritable_cache_is_reported_and_the_graph_still_runs(espnetv2, tmp_path, monkeypatch, caplog):
    if not RUNTIMES:
        pytest.skip("no compiled runtime installed")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PEBAL_CACHE_DIR", str(blocker / "cache"))
    model, meta = espnetv2
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        engine = InferenceEngine(model, meta, device="cpu", backend=RUNTIMES[0])
    assert "running without it" in caplog.text
    assert infer_maps(engine, _frame(*NETWORK))[0].shape == NETWORK
    assert blocker.read_text() == "not a directory"  # nothing of the user's replaced


@pytest.mark.skipif(not backends.installed("openvino"), reason="openvino not installed")
def test_onnx_export_with_smoothing_runs_in_openvino(espnetv2):
    """pebal-export's ONNX (normalised image in, smoothing included) reads and compiles in OpenVINO and
    equals eager PyTorch (its reflect Pad and ReduceLogSumExp did not, before the portable forms)."""
    import openvino

    from pebal_training import export as E

    model, _meta = espnetv2
    module = E.scoring_model(model, smoothing=True)
    data = E.onnx_bytes(module, NETWORK)
    compiled = openvino.Core().compile_model(openvino.Core().read_model(model=data), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    x = E.example_input(NETWORK, seed=5)
    result = compiled({0: x.numpy()})
    with torch.no_grad():
        sem_ref, energy_ref = module(x)
    assert (result[compiled.output(0)] == sem_ref.numpy()).mean() >= 0.999
    assert np.abs(result[compiled.output(1)] - energy_ref.numpy()).max() <= 1e-3


# ------------------------------------------------------------------------------------------- TensorRT
# No GPU here: TensorRtRunner's glue (parse, build, plan cache, bindings, outputs) runs against a stand-in
# of TensorRT 10's Python API that checks the ONNX it is given and writes known values through the bound
# output addresses. TensorRT's own numbers are not measured (backends.py's docstring).


def _stand_in_tensorrt(monkeypatch, parse_ok: bool = True, build_ok: bool = True):
    import ctypes
    import importlib.machinery
    import json
    import types

    onnx = pytest.importorskip("onnx")
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.0-stand-in"
    trt.builds, trt.refuse_next_plan = [], False
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.DataType = types.SimpleNamespace(FLOAT="float32", HALF="float16", UINT8="uint8", INT32="int32",
                                         INT8="int8", BOOL="bool")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", BF16="bf16")
    elem = {1: "float32", 2: "uint8"}

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            graph = onnx.load_from_string(data).graph
            self.network.io = [(v.name, "input" if v in graph.input else "output", elem[v.type.tensor_type.elem_type],
                                [d.dim_value for d in v.type.tensor_type.shape.dim])
                               for v in [*graph.input, *graph.output]]
            return parse_ok

        def get_error(self, i):
            return "In node 7 (Cast): UNSUPPORTED_NODE"

    class Config:
        def __init__(self):
            self.flags = []

        def set_flag(self, flag):
            self.flags.append(flag)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return types.SimpleNamespace(io=[])

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            trt.builds.append(list(config.flags))
            return json.dumps(network.io).encode() if build_ok else None

    class Context:
        def __init__(self, engine):
            self.engine, self.addresses = engine, {}

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            for name, mode, dtype, shape in self.engine.io:
                if mode == "output":  # class 7 everywhere, energy bytes 0 (= 0.0)
                    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    ctypes.memset(self.addresses[name], 7 if dtype == "uint8" else 0, size)
            return True

    class Engine:
        def __init__(self, io):
            self.io = io
            self.num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def _field(self, name, k):
            return next(t[k] for t in self.io if t[0] == name)

        def get_tensor_mode(self, name):
            return self._field(name, 1)

        def get_tensor_dtype(self, name):
            return self._field(name, 2)

        def get_tensor_shape(self, name):
            return self._field(name, 3)

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            if trt.refuse_next_plan:  # a plan of another TensorRT build
                trt.refuse_next_plan = False
                return None
            return Engine(json.loads(plan))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    return trt


def test_tensorrt_runner_builds_caches_and_binds(espnetv2, tmp_path, monkeypatch, caplog):
    trt = _stand_in_tensorrt(monkeypatch)
    model, meta = espnetv2
    assert resolve_backend("auto", "cuda") == "tensorrt" and resolve_backend("tensorrt", "cuda") == "tensorrt"
    runner = backends.build_runner("tensorrt", model, meta.mean, meta.std, NETWORK, precision="fp16", device="cpu")
    assert trt.builds == [["fp16"]]
    # TensorRT gets the float-input graph (the device resizes in float32), outputs semantic + score
    assert sorted(runner._outputs) == ["score", "semantic"] and runner._input == "rgb"
    assert runner._engine.io[0] == ["rgb", "input", "float32", [1, *NETWORK, 3]]
    semantic, score = runner(torch.zeros((1, *NETWORK, 3)))
    assert semantic.dtype == torch.uint8 and tuple(semantic.shape) == (1, *NETWORK) and (semantic == 7).all()
    assert score.dtype == torch.float32 and (score == 0).all()
    assert runner._context.addresses["semantic"] == runner._outputs["semantic"].data_ptr()
    assert semantic.data_ptr() != runner._outputs["semantic"].data_ptr()  # a copy: the next frame overwrites
    # the plan is cached per precision; one that TensorRT cannot load is built again
    backends.build_runner("tensorrt", model, meta.mean, meta.std, NETWORK, precision="fp16", device="cpu")
    assert len(trt.builds) == 1
    backends.build_runner("tensorrt", model, meta.mean, meta.std, NETWORK, precision="fp32", device="cpu")
    assert trt.builds[-1] == [] and len(trt.builds) == 2
    trt.refuse_next_plan = True
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        backends.build_runner("tensorrt", model, meta.mean, meta.std, NETWORK, precision="fp16", device="cpu")
    assert len(trt.builds) == 3 and "not loadable" in caplog.text
    # the engine's TensorRT path: device resize, the engine, device upsampling + smoothing, maps to the host
    engine = InferenceEngine(model, meta, device="cpu", backend="torch")
    engine.backend = "tensorrt"
    sem, score, _ = infer_maps(engine, _frame(75, 131))
    assert sem.shape == score.shape == (75, 131) and (sem == 7).all() and np.abs(score).max() == 0


@pytest.mark.parametrize("failure", ["parse", "build"])
def test_tensorrt_failures_are_one_clear_error_and_auto_falls_back(espnetv2, monkeypatch, caplog, failure):
    _stand_in_tensorrt(monkeypatch, parse_ok=failure != "parse", build_ok=failure != "build")
    model, meta = espnetv2
    expected = "UNSUPPORTED_NODE" if failure == "parse" else "could not build an engine"
    with pytest.raises(BackendError, match=expected):
        backends.build_runner("tensorrt", model, meta.mean, meta.std, NETWORK, device="cpu")
    engine = InferenceEngine(model, meta, device="cpu", backend="torch", input_size="native")
    engine.backend, engine._auto = "tensorrt", True
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        sem, _, _ = infer_maps(engine, _frame(64, 96))
    assert engine.backend == "torch" and "using torch" in caplog.text and sem.shape == (64, 96)
    engine.backend, engine._auto = "tensorrt", False
    with pytest.raises(BackendError, match=expected):
        infer_maps(engine, _frame(64, 96))


@pytest.mark.skipif(not (torch.cuda.is_available() and backends.installed("tensorrt")),
                    reason="needs a CUDA GPU with TensorRT (pip install -e '.[tensorrt]')")
def test_tensorrt_outputs_equal_the_torch_path_on_the_gpu(espnetv2):
    """On a GPU machine: fp32 as the CPU runtimes (agreement >= 99.9 %, energy within 1e-3); fp16 within
    the tolerances of BENCHMARKS.md figure 9 (agreement >= 99.5 %, energy p99 within 0.1)."""
    model, meta = espnetv2
    rgb = _frame(150, 330)
    for precision, agreement, energy in (("fp32", 0.999, 1e-3), ("fp16", 0.995, 0.1)):
        reference = InferenceEngine(model, meta, device="cuda", backend="torch", precision="fp32")
        engine = InferenceEngine(model, meta, device="cuda", backend="tensorrt", precision=precision)
        assert engine.backend == "tensorrt"
        sem_ref, score_ref, _ = infer_maps(reference, rgb)
        sem, score, _ = infer_maps(engine, rgb)
        assert sem.shape == score.shape == rgb.shape[:2]
        assert (sem == sem_ref).mean() >= agreement, precision
        assert np.quantile(np.abs(score - score_ref), 0.99 if precision == "fp16" else 1.0) <= energy, precision


SIGNAL_STACK_SCRIPT = r"""
import ctypes, faulthandler, gc, io, os, signal, sys
import torch
from pebal_perception.core.backends import OpenVinoRunner

faulthandler.enable()  # as pytest: this thread gets a signal stack of its own
libc = ctypes.CDLL(None)

class StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

def stack():
    s = StackT()
    libc.sigaltstack(None, ctypes.byref(s))
    return (s.ss_sp, s.ss_flags, s.ss_size)

buf = io.BytesIO()
torch.onnx.export(torch.nn.Conv2d(3, 2, 3), torch.zeros(1, 3, 8, 8), buf, dynamo=False)
before = stack()
a = OpenVinoRunner(buf.getvalue(), 1)
b = OpenVinoRunner(buf.getvalue(), 1)  # two cores alive at once, the first one goes first
del a
gc.collect()
del b
gc.collect()
assert stack() == before, (stack(), before)
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))  # Python handlers use SA_ONSTACK
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""


def test_openvino_runners_leave_the_threads_signal_stack_valid(tmp_path):
    """Two OpenVINO runners with overlapping lifetimes used to leave the thread with the first one's freed
    signal stack: the next Python signal handler (SIGINT, a DataLoader's SIGCHLD) then died with SIGSEGV.
    The whole test suite crashed that way as test_soak.py started (issue 24, item 10)."""
    import subprocess
    import sys

    pytest.importorskip("openvino")
    proc = subprocess.run([sys.executable, "-c", SIGNAL_STACK_SCRIPT], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["handled", "alive"]
