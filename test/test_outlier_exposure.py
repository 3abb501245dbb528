"""Outlier exposure (paste, CityscapesCocoMix) and the train / eval transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pebal_training.data.datasets import CocoOutlierSource, EXCLUDED_COCO80_INDICES, parse_yolo_seg, read_label, \
    read_rgb
from pebal_training.data.labels import OUTLIER_LABEL
from pebal_training.data.outlier_exposure import (CityscapesCocoMix, loader_generator, paste_outlier,
                                                  sample_rng, seed_everything, seed_worker)
from pebal_training.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform


def blob_object(h: int = 9, w: int = 11, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An object image with a non-rectangular mask whose bbox does not touch the image border."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[2:7, 3:9] = True
    mask[2, 3] = mask[6, 8] = False
    mask[4, 2] = True
    return rgb, mask


def check_paste(scene_rgb, scene_label, obj_rgb, obj_mask, out_rgb, out_label):
    """254 exactly where the (bbox-cropped) mask went, object pixels there, the scene elsewhere."""
    assert not (scene_label == OUTLIER_LABEL).any()
    rows, cols = np.nonzero(obj_mask)
    box_mask = obj_mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    box_rgb = obj_rgb[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    pasted = out_label == OUTLIER_LABEL
    assert pasted.sum() == obj_mask.sum()
    prow, pcol = np.nonzero(pasted)
    top, left = prow.min(), pcol.min()
    h, w = box_mask.shape
    np.testing.assert_array_equal(pasted[top:top + h, left:left + w], box_mask)
    np.testing.assert_array_equal(out_rgb[pasted], box_rgb[box_mask])
    np.testing.assert_array_equal(out_rgb[~pasted], scene_rgb[~pasted])
    np.testing.assert_array_equal(out_label[~pasted], scene_label[~pasted])
    return top, left


# --------------------------------------------------------------------------------------------------
# paste


def test_paste_copies_masked_pixels_only():
    scene_rgb = np.full((20, 30, 3), 7, np.uint8)
    scene_label = np.full((20, 30), 3, np.uint8)
    obj_rgb, obj_mask = blob_object()
    before = (scene_rgb.copy(), scene_label.copy(), obj_rgb.copy(), obj_mask.copy())
    out_rgb, out_label = paste_outlier(scene_rgb, scene_label, obj_rgb, obj_mask, np.random.default_rng(1))
    check_paste(scene_rgb, scene_label, obj_rgb, obj_mask, out_rgb, out_label)
    for a, b in zip(before, (scene_rgb, scene_label, obj_rgb, obj_mask)):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    assert out_rgb.dtype == np.uint8 and out_label.dtype == np.uint8


def test_paste_position_is_uniform_over_all_fitting_positions():
    # bbox of the mask is 5 x 7; in a 6 x 9 scene the top-left can be y in {0, 1}, x in {0, 1, 2}
    obj_rgb, obj_mask = blob_object()
    scene_rgb = np.zeros((6, 9, 3), np.uint8)
    scene_label = np.zeros((6, 9), np.uint8)
    seen = set()
    for s in range(120):
        out_rgb, out_label = paste_outlier(scene_rgb, scene_label, obj_rgb, obj_mask, np.random.default_rng(s))
        seen.add(check_paste(scene_rgb, scene_label, obj_rgb, obj_mask, out_rgb, out_label))
    assert seen == {(y, x) for y in (0, 1) for x in (0, 1, 2)}


def test_paste_edge_cases():
    scene_rgb = np.zeros((4, 5, 3), np.uint8)
    scene_label = np.ones((4, 5), np.uint8)
    obj_rgb, obj_mask = blob_object()
    # empty mask: the scene comes back unchanged (as a copy)
    out_rgb, out_label = paste_outlier(scene_rgb, scene_label, obj_rgb, np.zeros_like(obj_mask),
                                       np.random.default_rng(0))
    np.testing.assert_array_equal(out_label, scene_label)
    assert out_label is not scene_label
    # a box larger than the scene is clipped to a scene-sized window, never rescaled
    out_rgb, out_label = paste_outlier(scene_rgb, scene_label, obj_rgb, obj_mask, np.random.default_rng(0))
    assert out_label.shape == (4, 5) and 0 < (out_label == OUTLIER_LABEL).sum() <= obj_mask.sum()
    assert set(map(tuple, out_rgb[out_label == OUTLIER_LABEL])) <= set(map(tuple, obj_rgb[obj_mask]))
    with pytest.raises(ValueError, match="do not match"):
        paste_outlier(scene_rgb, scene_label[:3], obj_rgb, obj_mask, np.random.default_rng(0))


def test_real_coco_samples_on_real_cityscapes_frame(shared_assets):
    coco_root = shared_assets / "coco_outlier_samples"
    src = CocoOutlierSource(coco_root, min_size=0)
    assert src.fmt == "yolo" and len(src) == 10 and src.dropped == {}
    for name in src.names:  # none of the 10 samples holds an excluded (road-scene) class
        classes = {c for c, _ in parse_yolo_seg(coco_root / "labels" / f"{name}.txt")}
        assert classes and not classes & EXCLUDED_COCO80_INDICES
    # Meta-OoD's >= 480 rule keeps only the 6 samples whose both sides reach 480
    assert CocoOutlierSource(coco_root).names == ["000000000078", "000000000133", "000000000143",
                                                  "000000000263", "000000000394", "000000000575"]

    city = shared_assets / "cityscapes_val"
    scene_rgb = read_rgb(city / "frankfurt_000000_000294_leftImg8bit.png")
    assert scene_rgb.shape == (1024, 2048, 3)
    gt = read_label(city / "mmseg_pseudo_256x128" / "frankfurt_000000_000294_gtFine_labelTrainIds.png")
    scene_label = np.repeat(np.repeat(gt, 8, axis=0), 8, axis=1).astype(np.uint8)  # nearest x8 to 1024 x 2048

    obj_rgb, obj_mask = src[src.names.index("000000000502")]  # the bear
    assert obj_mask.any() and obj_rgb.shape[:2] == obj_mask.shape
    out_rgb, out_label = paste_outlier(scene_rgb, scene_label, obj_rgb, obj_mask, np.random.default_rng(666))
    check_paste(scene_rgb, scene_label, obj_rgb, obj_mask, out_rgb, out_label)


# --------------------------------------------------------------------------------------------------
# CityscapesCocoMix


def tiny_inliers(n: int, h: int = 24, w: int = 32) -> list[dict]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        out.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                    "label": rng.integers(0, 19, (h, w)).astype(np.uint8), "name": f"scene{i}"})
    return out


def tiny_outliers(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [blob_object(seed=200 + j) for j in range(n)]


def test_mix_length_and_sample_types():
    assert len(CityscapesCocoMix(tiny_inliers(30), tiny_outliers(4))) == 33
    assert len(CityscapesCocoMix(tiny_inliers(5), tiny_outliers(4))) == 6  # at least one outlier sample
    assert len(CityscapesCocoMix(tiny_inliers(5), None)) == 5
    mix = CityscapesCocoMix(tiny_inliers(30), tiny_outliers(2), seed=3)
    assert mix.num_outlier == 3 and set(mix.outlier_indices.tolist()) == {0, 1}  # 2 objects, one repeated
    inl = tiny_inliers(30)
    for i in range(30):
        s = mix[i]
        assert not s["is_ood"] and s["name"] == f"scene{i}"
        np.testing.assert_array_equal(s["label"], inl[i]["label"])
    for i in range(30, 33):
        s = mix[i]
        assert s["is_ood"] and (s["label"] == OUTLIER_LABEL).sum() == tiny_outliers(2)[0][1].sum()
        assert "+" in s["name"]
    with pytest.raises(IndexError):
        mix[33]


def test_mix_is_deterministic_per_seed_epoch_index():
    transform = TrainTransform(crop_size=(16, 20), scales=(0.75, 1.0, 1.5))
    a = CityscapesCocoMix(tiny_inliers(40), tiny_outliers(12), transform=transform, seed=7)
    b = CityscapesCocoMix(tiny_inliers(40), tiny_outliers(12), transform=transform, seed=7)
    assert len(a) == 44
    order = list(range(len(a)))
    first = [a[i] for i in order]
    second = [b[i] for i in reversed(order)][::-1]  # another copy, visited in another order
    for x, y in zip(first, second):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        assert x["is_ood"] == y["is_ood"] and x["name"] == y["name"]
        assert x["image"].dtype == torch.float32 and x["label"].dtype == torch.int64
        assert tuple(x["image"].shape) == (3, 16, 20) and tuple(x["label"].shape) == (16, 20)

    subset0 = a.outlier_indices.copy()
    a.set_epoch(1)
    assert not np.array_equal(a.outlier_indices, subset0)  # a fresh subset each epoch
    assert not torch.equal(a[5]["image"], first[5]["image"])  # and fresh augmentation
    a.set_epoch(0)
    np.testing.assert_array_equal(a.outlier_indices, subset0)
    assert torch.equal(a[42]["image"], first[42]["image"])
    c = CityscapesCocoMix(tiny_inliers(40), tiny_outliers(12), transform=transform, seed=8)
    assert not np.array_equal(c.outlier_indices, subset0)


def test_mix_identical_across_dataloader_worker_counts():
    mix = CityscapesCocoMix(tiny_inliers(20), tiny_outliers(5), transform=TrainTransform(crop_size=12), seed=1)
    mix.set_epoch(2)

    def run(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(mix, batch_size=4, shuffle=False, num_workers=workers, worker_init_fn=seed_worker,
                            generator=loader_generator(0))
        return [torch.cat([b["image"].flatten(), b["label"].flatten().float()]) for b in loader]

    for x, y in zip(run(0), run(2)):
        assert torch.equal(x, y)


def test_sample_rng_streams_are_distinct():
    assert sample_rng(0, 1, 2).random() == sample_rng(0, 1, 2).random()
    assert sample_rng(0, 1, 2).random() != sample_rng(0, 1, 3).random()
    assert sample_rng(0, 1, 0).random() != sample_rng(0, 1, 0 + 1).random()
    with pytest.raises(ValueError):
        CityscapesCocoMix(tiny_inliers(2), None, seed=-1)


# --------------------------------------------------------------------------------------------------
# transforms


def coord_image(h: int, w: int) -> np.ndarray:
    """R = row, G = column, B = 0: every pixel tells where it came from."""
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rr, cc, np.zeros_like(rr)], axis=-1).astype(np.uint8)


def denormalize(image: torch.Tensor) -> np.ndarray:
    arr = image.numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD, np.float32) + np.array(IMAGENET_MEAN, np.float32)
    return np.round(arr * 255).astype(np.int64)


def test_train_transform_pads_symmetrically():
    t = TrainTransform(crop_size=16, scales=(1.0,), flip_prob=0.0)
    rgb = coord_image(10, 12)
    label = np.full((10, 12), 4, np.uint8)
    image, lab, is_ood = t(rgb, label, np.random.default_rng(0))
    assert image.dtype == torch.float32 and lab.dtype == torch.int64 and isinstance(is_ood, bool) and not is_ood
    assert tuple(image.shape) == (3, 16, 16) and tuple(lab.shape) == (16, 16)
    top, left = 3, 2  # (16 - 10) // 2, (16 - 12) // 2
    inside = np.zeros((16, 16), bool)
    inside[top:top + 10, left:left + 12] = True
    assert (lab.numpy()[inside] == 4).all() and (lab.numpy()[~inside] == 255).all()
    assert (image.numpy()[:, ~inside] == 0).all()  # 0 in normalised space
    np.testing.assert_array_equal(denormalize(image)[top:top + 10, left:left + 12], rgb)


def test_train_transform_crop_offsets_are_inclusive_and_never_short():
    t = TrainTransform(crop_size=(2, 3), scales=(1.0,), flip_prob=0.0)
    rgb = coord_image(3, 5)
    label = np.zeros((3, 5), np.uint8)
    offsets = set()
    for s in range(100):
        image, lab, _ = t(rgb, label, np.random.default_rng(s))
        assert (lab.numpy() != 255).all()  # no 1-short crop padded with void
        px = denormalize(image)
        y0, x0 = px[0, 0, 0], px[0, 0, 1]
        np.testing.assert_array_equal(px, rgb[y0:y0 + 2, x0:x0 + 3])
        offsets.add((int(y0), int(x0)))
    assert offsets == {(y, x) for y in (0, 1) for x in (0, 1, 2)}


def test_train_transform_flip_rule():
    rgb = coord_image(4, 6)
    label = np.tile(np.arange(6, dtype=np.uint8), (4, 1))
    always = TrainTransform(crop_size=(4, 6), scales=(1.0,), flip_prob=1.0)
    never = TrainTransform(crop_size=(4, 6), scales=(1.0,), flip_prob=0.0)
    np.testing.assert_array_equal(always(rgb, label, np.random.default_rng(0))[1].numpy(), label[:, ::-1])
    np.testing.assert_array_equal(never(rgb, label, np.random.default_rng(0))[1].numpy(), label)
    default = TrainTransform(crop_size=(4, 6), scales=(1.0,))
    for s in range(50):  # flip exactly when the first uniform draw is >= 0.2 (the reference's rule)
        flipped = default(rgb, label, np.random.default_rng(s))[1].numpy()[0, 0] == 5
        assert flipped == (np.random.default_rng(s).random() >= 0.2)
    rate = np.mean([default(rgb, label, np.random.default_rng(s))[1].numpy()[0, 0] == 5 for s in range(400)])
    assert 0.74 < rate < 0.86


def test_train_transform_scale_and_is_ood():
    label = np.zeros((8, 10), np.uint8)
    label[0:2, 0:2] = OUTLIER_LABEL
    label[6:8, 8:10] = 255
    rgb = coord_image(8, 10)
    t2 = TrainTransform(crop_size=(16, 20), scales=(2.0,), flip_prob=0.0)
    _, lab, is_ood = t2(rgb, label, np.random.default_rng(0))
    np.testing.assert_array_equal(lab.numpy(), np.repeat(np.repeat(label, 2, 0), 2, 1))  # nearest, no pad
    assert is_ood
    t_half = TrainTransform(crop_size=(4, 5), scales=(0.5,), flip_prob=0.0)
    assert tuple(t_half(rgb, label, np.random.default_rng(0))[1].shape) == (4, 5)
    # a crop that misses the pasted object counts as an inlier sample
    crop = TrainTransform(crop_size=(4, 4), scales=(1.0,), flip_prob=0.0)
    results = {crop(rgb, label, np.random.default_rng(s))[2] for s in range(60)}
    assert results == {True, False}
    with pytest.raises(ValueError):
        TrainTransform(scales=())


def test_eval_transform_normalises_only():
    rgb = coord_image(5, 7)
    image, lab = EvalTransform()(rgb, np.ones((5, 7), np.uint8), np.random.default_rng(0))
    assert tuple(image.shape) == (3, 5, 7) and image.dtype == torch.float32 and lab.dtype == torch.int64
    np.testing.assert_array_equal(denormalize(image), rgb)
    expected = (rgb[0, 1, 1] / 255.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert abs(float(image[1, 0, 1]) - expected) < 1e-6
    image2, none = EvalTransform()(rgb)
    assert none is None and torch.equal(image, image2)


def test_seed_helpers_make_global_rngs_repeatable():
    seed_everything(5)
    a = (np.random.random(), torch.rand(1).item())
    seed_everything(5)
    assert (np.random.random(), torch.rand(1).item()) == a
    torch.manual_seed(11)
    seed_worker(0)
    x = np.random.random()
    torch.manual_seed(11)
    seed_worker(0)
    assert np.random.random() == x


def test_mix_of_real_readers(shared_assets, tmp_path):
    """CityscapesSegmentation (official layout, labelIds converted) + the real COCO samples."""
    import shutil

    src_dir = shared_assets / "cityscapes_val" / "mmseg_pseudo_256x128"
    stem = "frankfurt_000000_000294"
    (tmp_path / "leftImg8bit/val/frankfurt").mkdir(parents=True)
    (tmp_path / "gtFine/val/frankfurt").mkdir(parents=True)
    shutil.copy(src_dir / f"{stem}_leftImg8bit.png", tmp_path / "leftImg8bit/val/frankfurt")
    shutil.copy(src_dir / f"{stem}_gtFine_labelIds.png", tmp_path / "gtFine/val/frankfurt")
    from pebal_training.data.datasets import CityscapesSegmentation

    inliers = CityscapesSegmentation(tmp_path, "val")
    outliers = CocoOutlierSource(shared_assets / "coco_outlier_samples", min_size=0)
    mix = CityscapesCocoMix(inliers, outliers, transform=TrainTransform(crop_size=(128, 256), scales=(1.0,)), seed=0)
    assert len(mix) == 2  # 1 scene + at least one outlier sample
    plain, pasted = mix[0], mix[1]
    assert not plain["is_ood"] and pasted["is_ood"]
    assert set(torch.unique(plain["label"]).tolist()) <= set(range(19)) | {255}
    # COCO objects are larger than this 128 x 256 scene: the box is clipped, never rescaled
    assert 0 < int((pasted["label"] == OUTLIER_LABEL).sum()) <= 128 * 256
