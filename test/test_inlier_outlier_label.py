"""data.inlier_outlier_label: Cityscapes inlier frames that carry 254 (outlier) pixels, e.g. objects
pasted on the road beforehand. Off by default (a 254 is an error, the faithful path); on, the reader
keeps the 254 pixels, the training sample is ``is_ood`` and the losses see exactly what a pasted
outlier-exposure sample gives them. Synthetic, a few small images: fast."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pebal_perception.core.constants import IGNORE_LABEL, OUTLIER_LABEL
from pebal_training.config import config_from_dict, load_config
from pebal_training.data import labels as L
from pebal_training.data.datasets import CityscapesSegmentation, DatasetError
from pebal_training.data.outlier_exposure import CityscapesCocoMix, paste_outlier
from pebal_training.data.sources import build_inlier_dataset, build_train_dataset
from pebal_training.losses import pebal_loss

H, W = 32, 64


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (H, W)).astype(np.uint8)
    label[:3] = IGNORE_LABEL
    return rgb, label


def _pasted(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene with an object pasted by the trainer's own AnomalyMix paste (254 on the object)."""
    rgb, label = _scene(seed)
    obj = np.full((10, 12, 3), 200, np.uint8)
    mask = np.zeros((10, 12), bool)
    mask[2:9, 1:11] = True
    return paste_outlier(rgb, label, obj, mask, np.random.default_rng(seed))


def _write_tree(root, frames: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    from pebal_perception.core.io import atomic_save_image

    for name, (rgb, label) in frames.items():
        atomic_save_image(root / "leftImg8bit" / "train" / "x" / f"{name}_leftImg8bit.png", rgb)
        atomic_save_image(root / "gtFine" / "train" / "x" / f"{name}_gtFine_labelTrainIds.png", label)


@pytest.fixture()
def tree(tmp_path):
    frames = {"clean": _scene(1), "pasted": _pasted(2)}
    assert (frames["pasted"][1] == OUTLIER_LABEL).sum() == 70 and not (frames["clean"][1] == OUTLIER_LABEL).any()
    _write_tree(tmp_path / "cs", frames)
    return tmp_path / "cs", frames


def _cfg(root, on: bool | None):
    data = {"kind": "cityscapes", "root": str(root), "crop_size": [H, W], "scales": [1.0], "flip_prob": 0.0,
            "outliers": {"kind": "none"}}
    if on is not None:
        data["inlier_outlier_label"] = on
    return config_from_dict({"data": data})


def test_check_train_ids_refuses_254_unless_allowed():
    label = np.zeros((4, 4), np.uint8)
    label[1, 1] = OUTLIER_LABEL
    with pytest.raises(L.LabelValueError, match="254"):
        L.check_train_ids(label)
    assert np.array_equal(L.check_train_ids(label, allow_outlier=True), label)
    label[2, 2] = 200  # still no other value
    with pytest.raises(L.LabelValueError, match="200"):
        L.check_train_ids(label, allow_outlier=True)


def test_config_key_defaults_off_and_is_typed():
    assert load_config(None).data.inlier_outlier_label is False
    assert load_config(None, ["data.inlier_outlier_label=true"]).data.inlier_outlier_label is True


def test_default_reader_still_refuses_254(tree):
    root, _ = tree
    ds = build_inlier_dataset(_cfg(root, None))
    assert ds.names == ["clean", "pasted"]
    ds[0]  # a clean frame reads
    with pytest.raises(DatasetError, match="254"):
        ds[1]
    with pytest.raises(DatasetError, match="254"):
        build_inlier_dataset(_cfg(root, False))[1]


def test_option_keeps_254_and_the_sample_is_ood(tree):
    root, frames = tree
    cfg = _cfg(root, True)
    ds = build_inlier_dataset(cfg)
    assert isinstance(ds, CityscapesSegmentation) and ds.allow_outlier_label
    assert np.array_equal(ds[1]["label"], frames["pasted"][1]) and np.array_equal(ds[0]["label"], frames["clean"][1])
    mix = build_train_dataset(cfg)
    assert isinstance(mix, CityscapesCocoMix) and len(mix) == 2
    clean, pasted = mix[0], mix[1]
    assert clean["is_ood"] is False and pasted["is_ood"] is True
    assert torch.equal(pasted["label"], torch.from_numpy(frames["pasted"][1].astype(np.int64)))


def test_losses_treat_the_pixels_as_pasted_outliers(tree):
    """The batch from the tree gives the same PEBAL loss as the in-memory AnomalyMix paste, and the 254
    pixels are outliers in it (the loss differs from the one with them voided)."""
    root, frames = tree
    mix = build_train_dataset(_cfg(root, True))
    batch = torch.stack([mix[0]["label"], mix[1]["label"]])
    ref = torch.from_numpy(np.stack([frames["clean"][1], frames["pasted"][1]]).astype(np.int64))
    logits = 6 * torch.randn(2, 20, H, W, generator=torch.Generator().manual_seed(0))  # E well below m_out
    total, comps = pebal_loss(logits, batch)
    ref_total, ref_comps = pebal_loss(logits, ref)
    assert torch.equal(total, ref_total)
    assert set(comps) == set(ref_comps) and all(torch.equal(comps[k], ref_comps[k]) for k in comps)
    voided = batch.clone()
    voided[voided == OUTLIER_LABEL] = IGNORE_LABEL
    v_total, v_comps = pebal_loss(logits, voided)
    assert float(comps["energy_out"]) > 0 and float(v_comps["energy_out"]) == 0
    assert float(comps["pal_ood_outlier"]) != 0 and float(v_comps["pal_ood_outlier"]) == 0
    assert not torch.equal(total, v_total)
