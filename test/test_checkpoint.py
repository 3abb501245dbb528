"""Our checkpoint format, third-party loading through the same entry point, and refusal of bad files."""
import os

import pytest
import torch

from pebal_perception.core.checkpoint import (
    DEFAULT_THRESHOLD, FORMAT_VERSION, ModelMeta, load_checkpoint, save_checkpoint, update_checkpoint_meta)
from pebal_perception.core.models.common import CheckpointError

from tiny_models import TINY, TinySegNet


def _meta(**kw):
    return ModelMeta.for_architecture(TINY, **kw)


def test_roundtrip_keeps_weights_and_metadata(tmp_path):
    model = TinySegNet()
    torch.nn.init.normal_(model.classifier.weight)
    meta = _meta(threshold=-7.5, training_config={"lr": 1e-5, "epochs": 2}, metrics={"ap": 0.5})
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    raw = torch.load(path, weights_only=True)  # our format needs nothing but weights_only loading
    assert raw["format"] == "pebal-checkpoint" and raw["format_version"] == FORMAT_VERSION
    loaded, got = load_checkpoint(path)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert got.threshold == -7.5 and got.effective_threshold == -7.5
    assert got.training_config == {"lr": 1e-5, "epochs": 2} and got.metrics == {"ap": 0.5}
    assert got.input_size == [32, 64] and got.architecture == TINY
    assert not list(tmp_path.glob("*.tmp")), "temp files must not be left behind"


def test_uncalibrated_checkpoint_uses_the_documented_default(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", TinySegNet(), _meta())
    _, meta = load_checkpoint(path)
    assert meta.threshold is None and meta.effective_threshold == DEFAULT_THRESHOLD


def test_update_meta_rewrites_atomically(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", TinySegNet(), _meta())
    update_checkpoint_meta(path, threshold=-8.25, threshold_info={"target_tpr": 0.95})
    _, meta = load_checkpoint(path)
    assert meta.threshold == -8.25 and meta.threshold_info == {"target_tpr": 0.95}
    with pytest.raises(CheckpointError, match="unknown metadata field"):
        update_checkpoint_meta(path, nonsense=1)


def test_temp_files_of_interrupted_writes_name_their_target(tmp_path):
    from pebal_perception.core.io import atomic_write, atomic_write_bytes, temp_target_name

    def failing(f):
        f.write(b"partial")
        names.extend(p.name for p in tmp_path.iterdir())
        raise OSError("disk full")

    names: list[str] = []
    with pytest.raises(OSError):
        atomic_write(tmp_path / "step_000000007.pt", failing)
    assert [temp_target_name(n) for n in names] == ["step_000000007.pt"]  # the temp file, while writing
    assert not list(tmp_path.iterdir())  # removed when the writer raises (a SIGKILL would leave it)
    atomic_write_bytes(tmp_path / "done.pt", b"x")
    for name in ("done.pt", ".tmp", ".x.tmp", "..tmp", ".done.pt.abc", "done.pt.abc.tmp"):
        assert temp_target_name(name) is None, name


def test_third_party_state_dict_needs_or_detects_the_architecture(tmp_path):
    model = TinySegNet()
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    loaded, meta = load_checkpoint(path, TINY)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    assert meta.threshold is None and meta.source == "bare.pth"


def test_mismatched_keys_and_shapes_are_listed(tmp_path):
    state = TinySegNet().state_dict()
    state["classifier.extra"] = torch.zeros(1)
    del state["body.1.weight"]
    state["classifier.weight"] = torch.zeros(19, 8, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, TINY)
    msg = str(err.value)
    assert "body.1.weight" in msg and "classifier.extra" in msg and "classifier.weight" in msg
    assert str(path) in msg


def test_wrong_architecture_for_our_format(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", TinySegNet(), _meta())
    with pytest.raises(CheckpointError, match="not 'espnetv2'"):
        load_checkpoint(path, "espnetv2")


def test_newer_format_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", TinySegNet(), _meta())
    obj = torch.load(path, weights_only=True)
    obj["format_version"] = FORMAT_VERSION + 1
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_garbage_files_give_one_clear_error(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(path, TINY)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, TINY)
    assert not marker.exists()
    # And the raw pickle really would have run code: proves the test exercises something.
    with open(path, "rb") as f:
        assert b"system" in f.read()


def test_numpy_scalars_beside_weights_load_but_numpy_objects_do_not(tmp_path):
    """Training scripts store numpy scalars (NVIDIA's mean_iu); those load, numpy object arrays do not."""
    import numpy as np

    from pebal_perception.core.checkpoint import _torch_load

    path = tmp_path / "nvidia_like.pth"
    torch.save({"state_dict": TinySegNet().state_dict(), "mean_iu": np.float64(0.8), "epoch": np.int64(3)}, path)
    loaded = _torch_load(path)
    assert float(loaded["mean_iu"]) == 0.8 and int(loaded["epoch"]) == 3
    torch.save({"arr": np.array([object()], dtype=object)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        _torch_load(path)


def test_third_party_architecture_is_detected_from_the_keys(shared_assets):
    _, meta = load_checkpoint(shared_assets / "espnetv2_cityscapes" / "espnetv2_s_2.0_city_1024x512.pth")
    assert meta.architecture == "espnetv2" and meta.threshold is None


def test_undetectable_layout_asks_for_the_model_name(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"some.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="pass the model name"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------- metadata and weights

def _saved(tmp_path, model=None, name="m.pt", **meta):
    return save_checkpoint(tmp_path / name, model or TinySegNet(), _meta(**meta))


def _refused(path, *words):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and len(msg.splitlines()) == 1, msg
    for word in words:
        assert word in msg, msg
    return msg


@pytest.mark.parametrize("input_size, words", [
    ([100_000, 100_000], ("input_size", "4096")),
    ([8192, 8192], ("input_size", "4096")),
    ([32, 512], ("input_size", "aspect ratio")),
    ([30, 64], ("input_size", "multiples of 4")),
    ([0, 64], ("input_size",)),
    ([-32, 64], ("input_size",)),
    ([32], ("input_size",)),
    ([32, 64, 3], ("input_size",)),
    (["32", 64], ("input_size",)),
    ([32.0, 64], ("input_size",)),
    ([True, 64], ("input_size",)),
    (None, ("input_size",)),
])
def test_absurd_input_size_is_refused(tmp_path, input_size, words):
    """100000 x 100000 used to load: pebal-detect died on a 120 GB allocation, the node failed every frame."""
    _refused(_saved(tmp_path, input_size=input_size), *words)


def test_sane_input_sizes_load(tmp_path):
    for size in ([4096, 4096], [512, 4096], [4, 4], (64, 128)):
        _, meta = load_checkpoint(_saved(tmp_path, input_size=size))
        assert list(meta.input_size) == list(size)


@pytest.mark.parametrize("threshold", [float("inf"), float("-inf"), float("nan"), 1e300, "-9", True, [1.0]])
def test_unusable_threshold_is_refused(tmp_path, threshold):
    _refused(_saved(tmp_path, threshold=threshold), "threshold")


@pytest.mark.parametrize("field, value", [
    ("mean", [0.5, 0.5]), ("mean", [0.5, float("nan"), 0.5]), ("mean", ["a", 0.5, 0.5]), ("mean", 0.5),
    ("std", [0.2, 0.0, 0.2]), ("std", [0.2, -0.1, 0.2]), ("std", [0.2, float("inf"), 0.2]), ("std", [0.2] * 4),
    ("classes", []), ("classes", ["road"] * 18), ("classes", ["road"] * 18 + [3]), ("classes", "road"),
    ("model_kwargs", []), ("model_kwargs", {"width": "8"}), ("model_kwargs", {"bogus": 1}),
    ("model_kwargs", {"width": float("nan")}), ("model_kwargs", {3: 1}),
    ("threshold_info", "calibrated"), ("training_config", [1]), ("metrics", None), ("source", 3), ("model_id", None),
])
def test_bad_metadata_is_refused(tmp_path, field, value):
    _refused(_saved(tmp_path, **{field: value}), field)


def test_model_kwargs_that_would_build_a_huge_model_are_refused_before_building(tmp_path, monkeypatch):
    import tiny_models

    path = _saved(tmp_path, model_kwargs={"width": 10**9})  # 3 x 1e9 x 3 x 3 floats if it were built for real
    built = []
    original = tiny_models.TinySegNet.__init__

    def spy(self, *args, **kwargs):
        built.append(torch.empty(0).device.type)  # the default device while it is being built
        original(self, *args, **kwargs)

    monkeypatch.setattr(tiny_models.TinySegNet, "__init__", spy)
    _refused(path, "model_kwargs", "do not fit")
    assert built == ["meta"], built


def test_non_finite_weights_are_refused(tmp_path):
    """All-NaN weights used to load silently: NaN scores, no obstacles, exit 0."""
    model = TinySegNet()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    _refused(_saved(tmp_path, model), "not finite", "body.0.weight")
    model = TinySegNet()
    with torch.no_grad():
        model.classifier.bias[3] = float("inf")
    _refused(_saved(tmp_path, model), "not finite", "classifier.bias", "1 of 20")
    torch.save({k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in TinySegNet().state_dict().items()},
               tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="not finite"):
        load_checkpoint(tmp_path / "bare.pth", TINY)


def test_weights_that_give_non_finite_outputs_are_refused(tmp_path):
    model = TinySegNet()
    model.body[1].running_var.fill_(-1.0)  # finite, but sqrt(var + eps) is NaN in eval mode
    _refused(_saved(tmp_path, model), "test input", "not finite")
    model = TinySegNet()
    with torch.no_grad():
        model.classifier.weight.fill_(1e38)  # finite weights whose products overflow ...
        model.body[1].weight.fill_(0.0)  # ... on features of 1 everywhere (random ones may all be 0 after
        model.body[1].bias.fill_(1.0)  # the ReLU on the test input, about one init in 256: then no overflow)
    _refused(_saved(tmp_path, model), "test input")


def test_load_time_check_leaves_the_model_and_global_state_alone(tmp_path):
    from pebal_perception.core.checkpoint import validate_model

    torch.manual_seed(0)
    model = TinySegNet()
    model.train()
    model.body[1].eval()  # a mixed-mode model (e.g. frozen BN) keeps its modes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    validate_model(model, _meta(), "in-memory model")
    assert model.training and not model.body[1].training and model.classifier.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running statistics and counters untouched
    assert torch.equal(torch.get_rng_state(), rng) and torch.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())


def test_every_loader_goes_through_the_check(tmp_path):
    from pebal_perception.core.engine import InferenceEngine

    path = _saved(tmp_path, input_size=[100_000, 100_000])
    with pytest.raises(CheckpointError, match="input_size"):
        InferenceEngine.from_checkpoint(path, device="cpu")  # the node, pebal-bag, pebal-eval


def test_malformed_pebal_payloads_are_one_line(tmp_path):
    path = _saved(tmp_path)
    good = torch.load(path, weights_only=True)
    for change in ({"meta": "x"}, {"state_dict": [1]}, {"state_dict": {**good["state_dict"], "body.0.weight": "w"}},
                   {"state_dict": {**good["state_dict"], 3: torch.zeros(1)}},
                   {"meta": {**good["meta"], 7: 1}}):
        torch.save({**good, **change}, path)
        _refused(path)
