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
