"""core/graph_cache.py, the on-disk graph cache, trusts nothing in its folder: entries are signed with a per-user key
kept outside the cache, the folder must be the user's own, special and oversized files are refused unread,
ONNX external data is refused, entries are private, a ``.choice`` is checked by schema, the cache is
bounded, and two cold starts do not measure the auto backend at once."""
from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TINY, TinySegNet

from pebal_perception.core import backends, graph_cache
from pebal_perception.core.backends import BackendError
from pebal_perception.core.checkpoint import ModelMeta
from pebal_perception.core.engine import InferenceEngine, infer_maps

RUNTIMES = [name for name in ("openvino", "onnxruntime") if backends.installed(name)]
META = ModelMeta.for_architecture(TINY)
NETWORK = tuple(META.input_size)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("PEBAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("PEBAL_CACHE_KEY", raising=False)  # the key's default place, under XDG_CONFIG_HOME


def _model(seed: int = 0) -> TinySegNet:
    torch.manual_seed(seed)
    return TinySegNet().eval()


def _frame(h: int = 48, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _scores(engine: InferenceEngine) -> np.ndarray:
    return infer_maps(engine, _frame())[1]


def _entries(cache: Path, suffix: str) -> set[Path]:
    return {p for p in cache.iterdir() if p.suffix == suffix}


def _reseal(blob: Path) -> None:
    """What anyone who can write the cache folder can do: put new bytes in and fix the checksum beside them."""
    import hashlib

    meta = blob.with_suffix(".json")
    info = json.loads(meta.read_text())
    if "sha256" in info:
        info["sha256"] = hashlib.sha256(blob.read_bytes()).hexdigest()
    meta.write_text(json.dumps(info))


def _constant_score_onnx(network_hw: tuple[int, int]) -> bytes:
    """A 'graph' with the cache entry's inputs and outputs that says every pixel is road with energy -100."""
    import io
    import warnings

    class NoObstacleEver(torch.nn.Module):
        def forward(self, rgb):
            plane = rgb[..., 0]
            return (plane * 0).to(torch.uint8), plane.float() * 0 - 100

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classic exporter's deprecation notice
        torch.onnx.export(NoObstacleEver(), (torch.zeros((1, *network_hw, 3), dtype=torch.uint8),), buf, dynamo=False,
                          input_names=["rgb"], output_names=["semantic", "score"])
    return buf.getvalue()


def _plant_constant_onnx(cache: Path) -> Path:
    (onnx,) = _entries(cache, ".onnx")
    onnx.write_bytes(_constant_score_onnx(NETWORK))
    _reseal(onnx)
    return onnx


@pytest.mark.skipif("onnxruntime" not in RUNTIMES, reason="onnxruntime not installed")
def test_a_planted_onnx_with_a_matching_checksum_is_rebuilt(tmp_path, caplog):
    """A 313-byte ONNX with its sha256 beside it made every score -100 (no obstacle ever)."""
    model = _model()
    reference = _scores(InferenceEngine(model, META, device="cpu", backend="torch"))
    InferenceEngine(model, META, device="cpu", backend="onnxruntime")
    planted = _plant_constant_onnx(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        scores = _scores(InferenceEngine(model, META, device="cpu", backend="onnxruntime"))
    assert np.abs(scores - reference).max() <= 1e-3
    assert str(planted) in caplog.text  # the warning names the cache file, not the model


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="openvino not installed")
def test_a_planted_openvino_blob_with_a_matching_checksum_is_rebuilt(tmp_path, caplog):
    """A compiled blob of other weights, checksum recomputed, used to be imported and give their scores."""
    cache = tmp_path / "cache"
    model = _model()
    reference = _scores(InferenceEngine(model, META, device="cpu", backend="torch"))
    InferenceEngine(model, META, device="cpu", backend="openvino")
    (own,) = _entries(cache, ".ovblob")
    InferenceEngine(_model(seed=1), META, device="cpu", backend="openvino")
    (foreign,) = _entries(cache, ".ovblob") - {own}
    own.write_bytes(foreign.read_bytes())
    _reseal(own)
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        scores = _scores(InferenceEngine(model, META, device="cpu", backend="openvino"))
    assert np.abs(scores - reference).max() <= 1e-3
    assert str(own) in caplog.text


@pytest.mark.skipif(not RUNTIMES, reason="no compiled runtime installed")
@pytest.mark.parametrize("flaw", ["writable-by-others", "another-owner", "symlink"])
def test_a_cache_folder_that_is_not_the_users_own_is_not_used(tmp_path, caplog, flaw):
    """A folder others can write (or a link to one) is refused whole: nothing read from it, nothing written."""
    backend = RUNTIMES[-1]
    cache = tmp_path / "cache"
    model = _model()
    reference = _scores(InferenceEngine(model, META, device="cpu", backend="torch"))
    InferenceEngine(model, META, device="cpu", backend=backend)
    _plant_constant_onnx(cache)
    folder = cache
    if flaw == "writable-by-others":
        os.chmod(cache, 0o777)
    elif flaw == "another-owner":
        if os.geteuid() != 0:
            pytest.skip("giving the folder to another user needs root")
        os.chown(cache, 65534, 65534)
    else:
        folder = tmp_path / "elsewhere"
        cache.rename(folder)
        cache.symlink_to(folder, target_is_directory=True)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        scores = _scores(InferenceEngine(model, META, device="cpu", backend=backend))
    assert np.abs(scores - reference).max() <= 1e-3
    assert "running without it" in caplog.text and str(cache) in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def _onnx_reading(secret: Path) -> bytes:
    """An ONNX whose one initializer is 'external data': the bytes of ``secret``."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    tensor = TensorProto(name="leak", data_type=TensorProto.UINT8, dims=[secret.stat().st_size])
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in (("location", str(secret)), ("offset", "0"), ("length", str(secret.stat().st_size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph([helper.make_node("Identity", ["leak"], ["out"])], "leak", [],
                              [helper.make_tensor_value_info("out", TensorProto.UINT8, [secret.stat().st_size])],
                              initializer=[tensor])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.skipif(not RUNTIMES, reason="no compiled runtime installed")
def test_onnx_external_data_is_refused(tmp_path, monkeypatch):
    """External-data paths let a graph read any file the process can (a root-only file went into the
    published map, and into the compiled blob)."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root-only text\n" * 4)
    data = _onnx_reading(secret)
    monkeypatch.chdir(tmp_path)
    runners = {"onnxruntime": lambda: backends.OnnxRuntimeRunner(data, 1),
               "openvino": lambda: backends.OpenVinoRunner(data, 1)}
    for name in RUNTIMES:
        with pytest.raises(BackendError, match="external data"):
            runners[name]()


@pytest.mark.skipif(not RUNTIMES, reason="no compiled runtime installed")
def test_entries_and_folder_are_private_and_the_key_lives_outside(tmp_path):
    """Entries were written 0644 (a blob holding another file's text was readable by all)."""
    cache = tmp_path / "cache"
    InferenceEngine(_model(), META, device="cpu", backend=RUNTIMES[0])
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    files = list(cache.iterdir())
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    key = graph_cache.cache_key_path()
    assert key == tmp_path / "config" / "pebal" / "cache-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and cache not in key.parents


@pytest.mark.skipif(not RUNTIMES, reason="no compiled runtime installed")
@pytest.mark.parametrize("flaw", ["readable-by-others", "symlink", "wrong-size"])
def test_a_key_that_is_not_private_is_not_used(tmp_path, caplog, flaw):
    backend = RUNTIMES[0]
    model = _model()
    InferenceEngine(model, META, device="cpu", backend=backend)
    key = graph_cache.cache_key_path()
    assert key.is_file()
    if flaw == "readable-by-others":
        os.chmod(key, 0o644)
    elif flaw == "symlink":
        moved = tmp_path / "key-elsewhere"
        key.rename(moved)
        key.symlink_to(moved)
    else:
        key.write_bytes(b"short")
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        engine = InferenceEngine(model, META, device="cpu", backend=backend)
    assert "running without it" in caplog.text and str(key) in caplog.text
    assert infer_maps(engine, _frame())[0].shape == (48, 80)


BAD_CHOICES = [[1, 2], {"backend": {"a": 1}, "ms": {}}, {"backend": "tvm", "ms": {"tvm": 1.0}},
               {"backend": "torch", "ms": {"torch": "fast"}},
               {"backend": "torch", "ms": {"torch": 9.0, "openvino": 1.0}}]


@pytest.mark.parametrize("bad", BAD_CHOICES, ids=["list", "dict-backend", "unknown", "text-ms", "not-fastest"])
def test_a_choice_of_the_wrong_shape_is_measured_again(tmp_path, caplog, bad):
    """A ``.choice`` of [1, 2] or a dict crashed the engine, and the error blamed the model."""
    measured = []

    def run(name):
        measured.append(name)

    names = ["torch", "openvino"]
    key = {"case": json.dumps(bad)}
    graph_cache.cached({**key, "kind": "auto-choice"}, ".choice", lambda: json.dumps(bad).encode())
    (entry,) = _entries(tmp_path / "cache", ".choice")
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        choice = backends.choose_fastest(run, names, key, rounds=1)
    assert measured and choice["backend"] in names and set(choice["ms"]) == set(names)
    assert all(isinstance(v, float) for v in choice["ms"].values())
    assert str(entry) in caplog.text
    if not backends.compiled_runtimes():
        return
    # in the engine: a planted choice with its checksum fixed is measured again, the engine runs
    caplog.clear()
    model = _model()
    InferenceEngine(model, META, device="cpu", backend="auto")
    planted = next(p for p in _entries(tmp_path / "cache", ".choice") if p != entry)
    planted.write_text(json.dumps(bad))
    _reseal(planted)
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        engine = InferenceEngine(model, META, device="cpu", backend="auto")
    assert engine.backend in ("torch", *backends.compiled_runtimes())
    assert str(planted) in caplog.text
    assert infer_maps(engine, _frame())[0].shape == (48, 80)


SPECIAL_FILE_SCRIPT = r"""
import json, logging, os, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # reading /dev/zero or 20 GB fails here, not the host
logging.basicConfig(level=logging.WARNING)
from pebal_perception.core import backends, graph_cache

kind = sys.argv[1]
key = {"case": "special files"}
first = graph_cache.cached(key, ".onnx", lambda: b"graph bytes")
cache = graph_cache.cache_dir()
(blob,) = [p for p in cache.iterdir() if p.suffix == ".onnx"]
for target in (blob, blob.with_suffix(".json")):
    target.unlink()
    if kind == "symlink-to-dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        with open(target, "wb") as f:
            f.truncate(20 << 30)  # sparse: no disk used
    print("planted", target, file=sys.stderr, flush=True)
    assert graph_cache.cached(key, ".onnx", lambda: b"graph bytes") == first
    assert target.is_file() and not target.is_symlink() and target.stat().st_size < 4096
print(json.dumps({"ok": True}))
"""


@pytest.mark.parametrize("kind", ["symlink-to-dev-zero", "fifo", "sparse-20GB"])
def test_special_and_huge_files_in_the_cache_are_refused_unread(tmp_path, kind):
    """/dev/zero grew to 4 GB, a FIFO hung start-up, a 20 GB sparse file was read whole."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", SPECIAL_FILE_SCRIPT, kind], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"reading the cache hung: {exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"ok": True}
    for target in (".onnx", ".json"):  # each refusal is a warning that names the file
        planted = next(line.split(" ", 1)[1] for line in proc.stderr.splitlines()
                       if line.startswith("planted") and line.endswith(target))
        assert any(planted in line and "WARNING" in line for line in proc.stderr.splitlines()), proc.stderr


def _cache_files(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if p.suffix in (".json", ".onnx", ".ovblob", ".plan", ".choice")]


@pytest.mark.skipif("onnxruntime" not in RUNTIMES, reason="onnxruntime not installed")
def test_native_size_entries_are_bounded(tmp_path, monkeypatch):
    """Every image size of a native-size engine added a graph to the cache (8.7 MB each), without end."""
    monkeypatch.setattr(graph_cache, "CACHE_MAX_ENTRIES", 3)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / "notes.txt").write_text("the user's own")
    engine = InferenceEngine(_model(), META, device="cpu", backend="onnxruntime", input_size="native")
    for h in (32, 36, 40, 44, 48, 52):
        infer_maps(engine, _frame(h, 64))
        assert len(list(cache.glob("*.json"))) <= 3
    assert (cache / "notes.txt").read_text() == "the user's own"
    assert len(_entries(cache, ".onnx")) == 3


def test_the_cache_keeps_the_recently_used_entries_within_its_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_cache, "CACHE_MAX_ENTRIES", 3)
    builds = []

    def get(n: int, size: int = 100) -> bytes:
        def build() -> bytes:
            builds.append(n)
            return bytes([n]) * size

        return graph_cache.cached({"n": n}, ".onnx", build)

    for n in (0, 1, 2):
        get(n)
    get(0)  # used again: now the most recent
    get(3)  # one too many: 1, the least recently used, goes
    assert builds == [0, 1, 2, 3]
    get(0), get(2), get(3)
    assert builds == [0, 1, 2, 3]
    get(1)
    assert builds == [0, 1, 2, 3, 1]
    monkeypatch.setattr(graph_cache, "CACHE_MAX_BYTES", 12_000)
    for n in (10, 11, 12):
        get(n, size=5000)
    assert sum(p.stat().st_size for p in _cache_files(tmp_path / "cache")) <= 12_000
    get(11, size=5000), get(12, size=5000)  # the two most recent fit
    assert builds == [0, 1, 2, 3, 1, 10, 11, 12]
    get(10, size=5000)  # three would not: 10 went
    assert builds == [0, 1, 2, 3, 1, 10, 11, 12, 10]


def test_two_cold_starts_measure_the_auto_backend_once(tmp_path):
    """Two cold starts measured at once (each slowed by the other) and the last to finish wrote its choice,
    possibly the slower backend's: now the second waits and takes the first one's choice."""
    names = ["torch", "openvino", "onnxruntime"]
    key = {"case": "cold starts"}
    measuring = {"a": [], "b": []}
    start = threading.Barrier(2)
    results = {}

    def cold_start(tag: str) -> None:
        def run(name: str) -> None:
            measuring[tag].append(name)
            time.sleep(0.02)

        start.wait()
        results[tag] = backends.choose_fastest(run, names, key, rounds=3)

    threads = [threading.Thread(target=cold_start, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results["a"] == results["b"]
    assert sum(1 for calls in measuring.values() if calls) == 1  # one measured, the other waited
    assert backends.choose_fastest(lambda name: pytest.fail("measured again"), names, key) == results["a"]


def test_a_key_inside_the_cache_folder_is_not_used(tmp_path, monkeypatch, caplog):
    """Whoever can write the cache must not be able to write the key: a cache folder holding it is refused."""
    monkeypatch.setenv("PEBAL_CACHE_DIR", str(tmp_path / "config"))
    with caplog.at_level(logging.WARNING, logger="pebal.backends"):
        assert graph_cache.cached({"case": "key inside"}, ".onnx", lambda: b"graph") == b"graph"
    assert "running without it" in caplog.text
    assert not list((tmp_path / "config").glob("*.onnx"))


def test_the_key_may_be_placed_by_pebal_cache_key(tmp_path, monkeypatch):
    key = tmp_path / "elsewhere" / "my-key"
    monkeypatch.setenv("PEBAL_CACHE_KEY", str(key))
    assert graph_cache.cached({"case": "placed key"}, ".onnx", lambda: b"graph") == b"graph"
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
