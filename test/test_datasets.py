"""Dataset readers and label mappers (pebal_training.data.labels / .datasets).

Every test builds a tiny tree in the benchmark's true layout under tmp_path and reads it back; the
real Cityscapes / COCO samples are used through the ``shared_assets`` fixture only.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pebal_training.data import labels as L
from pebal_training.data.datasets import (ANOMALY_DATASETS, CityscapesSegmentation, CocoOutlierSource,
                                          DatasetError, FishyscapesDataset, LostAndFoundDataset,
                                          RoadAnomalyDataset, SegmentMeIfYouCanDataset, collate_skip_none,
                                          open_anomaly_dataset, parse_yolo_seg, rasterize_yolo_polygons,
                                          read_label)

H, W = 6, 8


# --------------------------------------------------------------------------------------------------
# helpers


def write_rgb(path: Path, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """Writes a random RGB image; returns the RGB array as it will read back (lossless formats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if path.suffix == ".webp" else []
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    return rgb


def write_label(path: Path, label: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(label, dtype=np.uint8))
    return label


def pattern(values, h: int = H, w: int = W) -> np.ndarray:
    """An H x W label cycling through ``values``."""
    return np.resize(np.asarray(values, dtype=np.uint8), h * w).reshape(h, w)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------------------------------
# label tables and mappers


def test_cityscapes_label_table():
    lut = L.CITYSCAPES_ID_TO_TRAIN_ID
    assert lut[7] == 0 and lut[8] == 1 and lut[26] == 13 and lut[33] == 18
    for void_id in (0, 1, 3, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 200, 255):
        assert lut[void_id] == 255
    assert len(L.CITYSCAPES_TRAIN_NAMES) == 19
    assert L.CITYSCAPES_TRAIN_NAMES[0] == "road" and L.CITYSCAPES_TRAIN_NAMES[18] == "bicycle"
    train_ids = sorted(lab.train_id for lab in L.CITYSCAPES_LABELS if lab.train_id != 255)
    assert train_ids == list(range(19))
    out = L.label_ids_to_train_ids(np.array([[7, 24], [0, 33]], dtype=np.uint8))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 11], [255, 18]]
    with pytest.raises(L.LabelValueError, match="19"):
        L.check_train_ids(np.array([[0, 19]], dtype=np.uint8))


def test_cityscapes_conversion_on_real_labels(shared_assets):
    d = shared_assets / "cityscapes_val" / "mmseg_pseudo_256x128"
    ids = read_label(d / "frankfurt_000000_000294_gtFine_labelIds.png")
    train_ids = read_label(d / "frankfurt_000000_000294_gtFine_labelTrainIds.png")
    converted = L.label_ids_to_train_ids(ids)
    # The two fixture files were downscaled independently, so a few boundary pixels disagree.
    assert (converted == train_ids).mean() > 0.99
    assert set(np.unique(converted)) <= L.CITYSCAPES_TRAIN_ID_VALUES


def test_lost_and_found_table_and_unified_mapping():
    lut = L.LAF_ID_TO_TRAIN_ID
    assert lut[0] == 255 and lut[1] == 1
    non_hazards = {31, 33, 34, 36, 37, 38, 39}
    for label_id in range(2, 44):
        assert lut[label_id] == (0 if label_id in non_hazards else 2), label_id
    assert lut[44] == 255 and lut[255] == 255
    train = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    assert L.laf_train_ids_to_unified(train).tolist() == [[255, 0, 1, 255]]
    ids = np.array([[0, 1, 2, 31, 43, 99]], dtype=np.uint8)
    assert L.laf_label_ids_to_unified(ids).tolist() == [[255, 0, 1, 255, 1, 255]]
    with pytest.raises(L.LabelValueError, match="3"):
        L.laf_train_ids_to_unified(np.array([[1, 3]], dtype=np.uint8))


def test_unified_mappers():
    lab = np.array([[0, 1, 255]], dtype=np.uint8)
    for fn in (L.fishyscapes_to_unified, L.smiyc_to_unified, L.road_anomaly_to_unified):
        out = fn(lab)
        assert out.tolist() == [[0, 1, 255]] and out.dtype == np.uint8
        assert out is not lab
        with pytest.raises(L.LabelValueError, match="7"):
            fn(np.array([[0, 7]], dtype=np.uint8))
    with pytest.raises(L.LabelValueError, match="epfl"):
        L.road_anomaly_to_unified(np.array([[0, 2]], dtype=np.uint8))
    assert L.road_anomaly_to_unified(np.array([[0, 2, 255]], dtype=np.uint8), "epfl").tolist() == [[0, 1, 255]]
    with pytest.raises(L.LabelValueError, match="single-channel"):
        L.fishyscapes_to_unified(np.zeros((2, 2, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------
# Cityscapes


def make_cityscapes(root: Path, split: str = "train") -> dict[str, np.ndarray]:
    """Official layout: two cities; one frame ships only labelIds. Returns name -> expected trainIds."""
    expected = {}
    frames = [("aachen", "aachen_000000_000019", "train"), ("aachen", "aachen_000001_000019", "ids"),
              ("bochum", "bochum_000000_000313", "train")]
    for k, (city, stem, kind) in enumerate(frames):
        write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=k)
        gt = root / "gtFine" / split / city
        if kind == "train":
            expected[stem] = write_label(gt / f"{stem}_gtFine_labelTrainIds.png", pattern([0, 5, 18, 255]))
            write_label(gt / f"{stem}_gtFine_color.png", pattern([1]))  # other gtFine files are ignored
        else:
            write_label(gt / f"{stem}_gtFine_labelIds.png", pattern([7, 26, 0, 33, 4]))
            expected[stem] = pattern([0, 13, 255, 18, 255])
    return expected


def test_cityscapes_official_layout(tmp_path):
    expected = make_cityscapes(tmp_path)
    ds = CityscapesSegmentation(tmp_path, "train")
    assert ds.layout == "cityscapes"
    assert ds.names == sorted(expected)
    for sample in ds:
        assert sample["image"].shape == (H, W, 3) and sample["image"].dtype == np.uint8
        assert sample["label"].dtype == np.uint8
        np.testing.assert_array_equal(sample["label"], expected[sample["name"]])
    img = cv2.cvtColor(cv2.imread(str(tmp_path / "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png")),
                       cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(ds[2]["image"], img)


def test_cityscapes_pebal_flat_layout(tmp_path):
    for k, stem in enumerate(["zurich_000001_000019", "bremen_000000_000019"]):
        write_rgb(tmp_path / "images/city_gt_fine/val" / f"{stem}_leftImg8bit.png", seed=k)
        write_label(tmp_path / "annotation/city_gt_fine/val" / f"{stem}_gtFine.png", pattern([k, 255]))
    ds = CityscapesSegmentation(tmp_path, "val")
    assert ds.layout == "pebal_flat"
    assert ds.names == ["bremen_000000_000019", "zurich_000001_000019"]
    np.testing.assert_array_equal(ds[0]["label"], pattern([1, 255]))
    np.testing.assert_array_equal(ds[1]["label"], pattern([0, 255]))


def test_cityscapes_errors(tmp_path):
    with pytest.raises(DatasetError) as exc:
        CityscapesSegmentation(tmp_path, "train")
    assert str(tmp_path) in one_line(exc) and "leftImg8bit" in str(exc.value)

    make_cityscapes(tmp_path)
    with pytest.raises(DatasetError) as exc:
        CityscapesSegmentation(tmp_path, "val")
    assert f"{tmp_path / 'leftImg8bit' / 'val'}: folder missing" in one_line(exc)

    (tmp_path / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError) as exc:
        CityscapesSegmentation(tmp_path, "train")
    msg = one_line(exc)
    assert msg.startswith(f"{tmp_path / 'gtFine' / 'train'}: 1 image has no label")
    assert msg.endswith("bochum/bochum_000000_000313_leftImg8bit.png")


# --------------------------------------------------------------------------------------------------
# anomaly benchmarks


def make_fishyscapes(root: Path, subset: str = "LostAndFound", n: int = 3) -> list[np.ndarray]:
    labels = []
    for i in range(n):
        write_rgb(root / subset / "original" / f"{i}.png", seed=i)
        labels.append(write_label(root / subset / "labels" / f"{i}.png", pattern([0, 1, 255][i:] + [0])))
    (root / subset / "entropy").mkdir()  # other SynBoost folders are ignored
    return labels


@pytest.mark.parametrize("subset, key", [("LostAndFound", "fishyscapes_laf"), ("Static", "fishyscapes_static")])
def test_fishyscapes(tmp_path, subset, key):
    labels = make_fishyscapes(tmp_path, subset)
    ds = open_anomaly_dataset(key, tmp_path)
    assert isinstance(ds, FishyscapesDataset) and ds.subset == subset
    assert len(ds) == 3 and ds.names == ["0", "1", "2"]
    for sample, lab in zip(ds, labels):
        assert sample["image"].shape == (H, W, 3) and sample["image"].dtype == np.uint8
        assert sample["label"].dtype == np.uint8
        np.testing.assert_array_equal(sample["label"], lab)
    # the subset folder itself is accepted as root too
    assert len(FishyscapesDataset(tmp_path / subset, subset)) == 3


def test_fishyscapes_missing_folders_and_labels(tmp_path):
    with pytest.raises(DatasetError) as exc:
        FishyscapesDataset(tmp_path, "LostAndFound")
    assert f"{tmp_path / 'LostAndFound'}: folder missing" in one_line(exc)

    for name in ("a", "b", "c", "d"):
        write_rgb(tmp_path / "LostAndFound/original" / f"{name}.png")
    with pytest.raises(DatasetError) as exc:
        FishyscapesDataset(tmp_path, "LostAndFound")
    assert one_line(exc) == (f"{tmp_path / 'LostAndFound' / 'labels'}: folder missing "
                             "(expected labels/*.png beside original/)")

    write_label(tmp_path / "LostAndFound/labels/b.png", pattern([0]))
    with pytest.raises(DatasetError) as exc:
        FishyscapesDataset(tmp_path, "LostAndFound")
    msg = one_line(exc)
    assert msg.startswith(f"{tmp_path / 'LostAndFound' / 'labels'}: 3 images have no label")
    assert msg.endswith(": a.png, c.png, d.png")

    with pytest.raises(DatasetError, match="unknown Fishyscapes subset"):
        FishyscapesDataset(tmp_path, "Web")
    with pytest.raises(DatasetError, match="unknown anomaly dataset 'cityscapes'"):
        open_anomaly_dataset("cityscapes", tmp_path)


def test_many_missing_labels_are_abbreviated(tmp_path):
    for i in range(8):
        write_rgb(tmp_path / "original" / f"{i:02d}.jpg")
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError) as exc:
        RoadAnomalyDataset(tmp_path)
    assert one_line(exc).endswith("8 images have no label (expected labels/<stem>.png): 00.jpg, 01.jpg, 02.jpg, "
                                  "03.jpg, 04.jpg, …")


def test_read_errors_raise_or_skip(tmp_path):
    make_fishyscapes(tmp_path, n=4)
    lab_dir = tmp_path / "LostAndFound" / "labels"
    write_label(lab_dir / "1.png", np.zeros((H + 1, W), np.uint8))  # size mismatch
    write_label(lab_dir / "2.png", pattern([0, 1, 3]))  # value 3 is not 0/1/255
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 2] = 255
    cv2.imwrite(str(lab_dir / "3.png"), colour)  # a colourised label

    ds = FishyscapesDataset(tmp_path, "LostAndFound")
    with pytest.raises(DatasetError) as exc:
        ds[1]
    assert one_line(exc).startswith(f"{lab_dir / '1.png'}: label is 8x7 but its image 1.png is 8x6")
    with pytest.raises(DatasetError) as exc:
        ds[2]
    assert one_line(exc).startswith(f"{lab_dir / '2.png'}: unexpected Fishyscapes label values 3")
    with pytest.raises(DatasetError) as exc:
        ds[3]
    assert one_line(exc).startswith(f"{lab_dir / '3.png'}: colour label image")
    assert ds[0] is not None

    ds = FishyscapesDataset(tmp_path, "LostAndFound", on_error="skip")
    assert ds[1] is None and ds[2] is None
    assert [s["name"] for s in ds] == ["0"]
    assert ds.num_skipped == 3 and sorted(ds.skipped) == [1, 2, 3]
    assert str(lab_dir / "2.png") in ds.skipped[2]
    batch = collate_skip_none([ds[0], ds[1]])
    assert tuple(batch["label"].shape) == (1, H, W) and batch["name"] == ["0"]
    with pytest.raises(ValueError, match="on_error"):
        FishyscapesDataset(tmp_path, "LostAndFound", on_error="ignore")


def test_unreadable_image_names_the_file(tmp_path):
    make_fishyscapes(tmp_path, n=1)
    bad = tmp_path / "LostAndFound/original/0.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as exc:
        FishyscapesDataset(tmp_path, "LostAndFound")[0]
    assert one_line(exc) == f"{bad}: not a readable image"


def test_road_anomaly(tmp_path):
    write_rgb(tmp_path / "original/animals01.jpg")
    write_rgb(tmp_path / "original/zebra03.jpg")
    write_label(tmp_path / "labels/animals01.png", pattern([0, 1]))
    write_label(tmp_path / "labels/zebra03.png", pattern([1, 0, 0]))
    ds = open_anomaly_dataset("road_anomaly", tmp_path)
    assert isinstance(ds, RoadAnomalyDataset) and ds.names == ["animals01", "zebra03"]
    s = ds[1]
    assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8  # jpg: content is lossy
    np.testing.assert_array_equal(s["label"], pattern([1, 0, 0]))

    write_label(tmp_path / "labels/zebra03.png", pattern([2, 0, 0]))  # original EPFL encoding
    np.testing.assert_array_equal(ds[1]["label"], pattern([1, 0, 0]))  # "auto" (the default) tells
    with pytest.raises(DatasetError, match="encoding='epfl'"):
        RoadAnomalyDataset(tmp_path, encoding="synboost")[1]
    np.testing.assert_array_equal(RoadAnomalyDataset(tmp_path, encoding="epfl")[1]["label"], pattern([1, 0, 0]))
    write_label(tmp_path / "labels/zebra03.png", pattern([2, 1, 0]))  # both encodings at once: refused
    with pytest.raises(DatasetError, match="zebra03.png"):
        ds[1]

    with pytest.raises(DatasetError) as exc:
        RoadAnomalyDataset(tmp_path / "nowhere")
    assert f"{tmp_path / 'nowhere' / 'original'}: folder missing" in one_line(exc)


def test_lost_and_found(tmp_path):
    seqs = {"02_Hanns_Klemm_Str_44": ["02_Hanns_Klemm_Str_44_000000_000080", "02_Hanns_Klemm_Str_44_000001_000060"],
            "04_Maurener_Weg_8": ["04_Maurener_Weg_8_000000_000030"]}
    for seq, stems in seqs.items():
        for stem in stems:
            write_rgb(tmp_path / "leftImg8bit/test" / seq / f"{stem}_leftImg8bit.png")
    gt = tmp_path / "gtCoarse/test"
    s0, s1 = seqs["02_Hanns_Klemm_Str_44"]
    write_label(gt / "02_Hanns_Klemm_Str_44" / f"{s0}_gtCoarse_labelTrainIds.png", pattern([0, 1, 2, 255]))
    write_label(gt / "02_Hanns_Klemm_Str_44" / f"{s1}_gtCoarse_labelIds.png", pattern([0, 1, 5, 31]))
    write_label(gt / "04_Maurener_Weg_8" / "04_Maurener_Weg_8_000000_000030_gtCoarse_labelTrainIds.png",
                pattern([1]))
    ds = open_anomaly_dataset("lostandfound", tmp_path)
    assert isinstance(ds, LostAndFoundDataset)
    assert ds.names == [s0, s1, "04_Maurener_Weg_8_000000_000030"]
    np.testing.assert_array_equal(ds[0]["label"], pattern([255, 0, 1, 255]))
    np.testing.assert_array_equal(ds[1]["label"], pattern([255, 0, 1, 255]))
    np.testing.assert_array_equal(ds[2]["label"], pattern([0]))

    write_label(gt / "04_Maurener_Weg_8" / "04_Maurener_Weg_8_000000_000030_gtCoarse_labelTrainIds.png",
                pattern([1, 7]))
    with pytest.raises(DatasetError) as exc:
        ds[2]
    assert "04_Maurener_Weg_8_000000_000030_gtCoarse_labelTrainIds.png: unexpected LostAndFound trainId values 7" \
        in one_line(exc)

    (gt / "04_Maurener_Weg_8" / "04_Maurener_Weg_8_000000_000030_gtCoarse_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError) as exc:
        LostAndFoundDataset(tmp_path)
    assert one_line(exc).startswith(f"{gt}: 1 image has no label")
    with pytest.raises(DatasetError) as exc:
        LostAndFoundDataset(tmp_path, split="train")
    assert f"{tmp_path / 'leftImg8bit' / 'train'}: folder missing" in one_line(exc)


@pytest.mark.parametrize("track, key, ext", [("anomaly", "smiyc_anomaly", ".jpg"),
                                              ("obstacle", "smiyc_obstacle", ".webp")])
def test_segment_me_if_you_can(tmp_path, track, key, ext):
    rgb = write_rgb(tmp_path / "images" / f"validation0001{ext}", seed=3)
    write_rgb(tmp_path / "images" / f"validation0002{ext}", seed=4)
    write_rgb(tmp_path / "images" / f"test0001{ext}")  # test images ship without labels
    write_label(tmp_path / "labels_masks/validation0001_labels_semantic.png", pattern([0, 1, 255]))
    write_label(tmp_path / "labels_masks/validation0002_labels_semantic.png", pattern([0]))
    write_label(tmp_path / "labels_masks/validation0001_labels_semantic_color.png", pattern([9]))
    ds = open_anomaly_dataset(key, tmp_path)
    assert isinstance(ds, SegmentMeIfYouCanDataset) and ds.track == track
    assert ds.names == ["validation0001", "validation0002"] and ds.unlabelled == [f"test0001{ext}"]
    s = ds[0]
    np.testing.assert_array_equal(s["label"], pattern([0, 1, 255]))
    if ext == ".webp":  # lossless webp reads back exactly
        np.testing.assert_array_equal(s["image"], rgb)
    with pytest.raises(DatasetError) as exc:
        SegmentMeIfYouCanDataset(tmp_path, track, unlabelled="raise")
    assert one_line(exc).startswith(f"{tmp_path / 'labels_masks'}: 1 image has no label")
    with pytest.raises(DatasetError, match="unknown SegmentMeIfYouCan track"):
        SegmentMeIfYouCanDataset(tmp_path, "anomaly21")


def write_jpeg_as_png(path: Path, seed: int = 0) -> None:
    """JPEG data in a file named .png, as some distributions of these sets ship."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", rgb)
    assert ok
    path.write_bytes(data.tobytes())


@pytest.mark.parametrize("key", ["fishyscapes_laf", "fishyscapes_static", "lostandfound", "road_anomaly",
                                 "smiyc_anomaly", "smiyc_obstacle"])
def test_images_labels_masks_layout(tmp_path, key):
    """<set>/images/N.<ext> + <set>/labels_masks/N.png (most anomaly-segmentation repositories): read by
    every anomaly dataset, detected beside its own layout; WebP and JPEG-in-.png images; non-image files
    in images/ are left out; pairs by name (10 after 2), not by position."""
    rgb = write_rgb(tmp_path / "images/2.webp", seed=1)
    write_jpeg_as_png(tmp_path / "images/10.png", seed=2)
    write_rgb(tmp_path / "images/0.jpg", seed=3)
    (tmp_path / "images/LICENSE").write_text("not an image")
    (tmp_path / "images/notes.txt").write_text("not an image")
    anomaly = 2 if key == "road_anomaly" else 1
    write_label(tmp_path / "labels_masks/0.png", pattern([0, anomaly]))
    write_label(tmp_path / "labels_masks/2.png", pattern([0, anomaly, 255] if key != "road_anomaly" else [0, 2]))
    write_label(tmp_path / "labels_masks/10.png", pattern([0]))
    ds = open_anomaly_dataset(key, tmp_path)
    assert ds.layout == "labels_masks"
    assert ds.names == ["0", "10", "2"]
    np.testing.assert_array_equal(ds[0]["label"], pattern([0, 1]))
    np.testing.assert_array_equal(ds[2]["label"], pattern([0, 1, 255] if key != "road_anomaly" else [0, 1]))
    np.testing.assert_array_equal(ds[2]["image"], rgb)  # lossless WebP
    assert ds[1]["image"].shape == (H, W, 3)  # JPEG bytes inside a .png name
    (tmp_path / "labels_masks/10.png").unlink()
    if key.startswith("smiyc"):  # SMIYC ships unlabelled test images beside the labelled ones
        assert open_anomaly_dataset(key, tmp_path).names == ["0", "2"]
    else:
        with pytest.raises(DatasetError) as exc:
            open_anomaly_dataset(key, tmp_path)
        assert one_line(exc).startswith(f"{tmp_path / 'labels_masks'}: 1 image has no label")


def test_images_labels_masks_bad_values_name_the_file(tmp_path):
    write_rgb(tmp_path / "images/0.jpg")
    write_label(tmp_path / "labels_masks/0.png", pattern([0, 7]))
    with pytest.raises(DatasetError) as exc:
        open_anomaly_dataset("fishyscapes_laf", tmp_path)[0]
    assert one_line(exc).startswith(f"{tmp_path / 'labels_masks' / '0.png'}: ")


SHARED_SETS = [("fishyscapes_laf", "fishyscapes_lostandfound_val", 100, (1024, 2048)),
               ("fishyscapes_static", "fishyscapes_static_val", 30, (1024, 2048)),
               ("road_anomaly", "road_anomaly", 60, (720, 1280))]


@pytest.mark.parametrize("key, folder, count, shape", SHARED_SETS)
def test_real_benchmark_folders(shared_benchmarks, key, folder, count, shape):
    """The sets in ../shared/benchmarks read as they are distributed (first and last sample decoded)."""
    root = shared_benchmarks / folder
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    ds = open_anomaly_dataset(key, root)
    assert len(ds) == count and ds.layout == "labels_masks"
    for index in (0, len(ds) - 1):
        s = ds[index]
        assert s["image"].shape == (*shape, 3) and s["label"].shape == shape
        assert set(np.unique(s["label"])) <= {0, 1, 255}


def test_registry_names():
    assert set(ANOMALY_DATASETS) == {"fishyscapes_laf", "fishyscapes_static", "lostandfound", "road_anomaly",
                                     "smiyc_anomaly", "smiyc_obstacle"}


# --------------------------------------------------------------------------------------------------
# COCO outlier sources


def test_yolo_polygon_rasterisation(tmp_path):
    square = np.array([[0.25, 0.2], [0.75, 0.2], [0.75, 0.8], [0.25, 0.8]])  # x, y normalised
    mask = rasterize_yolo_polygons([square], 10, 20)
    expected = np.zeros((10, 20), bool)
    expected[2:9, 5:16] = True  # vertices (5, 2) .. (15, 8), boundary included
    np.testing.assert_array_equal(mask, expected)
    triangle = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    union = rasterize_yolo_polygons([square, triangle], 10, 20)
    assert union[0, 0] and union[0, 1] and not union[0, 3] and union[expected].all()

    f = tmp_path / "x.txt"
    f.write_text("16 0.25 0.2 0.75 0.2 0.75 0.8\n\n3 0 0 1 0 1 1 0 1\n")
    parsed = parse_yolo_seg(f)
    assert [c for c, _ in parsed] == [16, 3] and parsed[1][1].shape == (4, 2)
    f.write_text("16 0.25 0.2 0.75\n")
    with pytest.raises(DatasetError) as exc:
        parse_yolo_seg(f)
    assert one_line(exc).startswith(f"{f}:1: ")
    f.write_text("16 0.1 0.1 0.2 0.2\nsix 0.1 0.2 0.1 0.2 0.3 0.3\n")
    with pytest.raises(DatasetError, match=r"x\.txt:1: "):
        parse_yolo_seg(f)
    f.write_text("16 0.1 0.1 0.2 0.2 0.3 0.3\nsix 0.1 0.2 0.1 0.2 0.3 0.3\n")
    with pytest.raises(DatasetError, match=r"x\.txt:2: "):
        parse_yolo_seg(f)
    assert parse_yolo_seg(tmp_path / "absent.txt") == []


def test_yolo_source_class_exclusion_and_min_size(tmp_path):
    poly = "0.1 0.1 0.9 0.1 0.9 0.9 0.1 0.9"
    cases = {"dog": ("16", 500), "train": ("6", 500), "car": ("16\n2", 500), "stop": ("11", 500),
             "person": ("0", 500), "small": ("16", 100), "empty": (None, 500)}
    for name, (classes, size) in cases.items():
        write_rgb(tmp_path / "images" / f"{name}.jpg", size, size + 20)
        if classes is not None:
            (tmp_path / "labels").mkdir(exist_ok=True)
            (tmp_path / "labels" / f"{name}.txt").write_text("".join(f"{c} {poly}\n" for c in classes.split()))
    src = CocoOutlierSource(tmp_path)
    assert src.fmt == "yolo"
    assert src.names == ["dog", "train"]  # COCO 'train' is not in Meta-OoD's excluded list
    assert src.dropped == {"car": "excluded class car", "empty": "no instance", "person": "excluded class person",
                           "small": "too small 120x100", "stop": "excluded class stop sign"}
    rgb, mask = src[0]
    assert rgb.shape == (500, 520, 3) and rgb.dtype == np.uint8
    assert mask.dtype == bool and mask.shape == (500, 520)
    assert mask[50:451, 52:469].all() and mask.sum() == 401 * 417  # (52, 50) .. (468, 450) inclusive

    relaxed = CocoOutlierSource(tmp_path, min_size=0)
    assert relaxed.names == ["dog", "small", "train"]


def _write_coco(tmp_path: Path) -> tuple[Path, dict]:
    from pycocotools import mask as mask_utils

    h, w = 30, 40
    crowd = np.zeros((h, w), np.uint8)
    crowd[10:15, 5] = 1  # column-major RLE: 5*30+10 zeros, 5 ones, rest zeros
    crowd_rle = {"size": [h, w], "counts": [5 * h + 10, 5, h * w - (5 * h + 15)]}
    compressed = np.zeros((h, w), np.uint8, order="F")
    compressed[25:28, 35:38] = 1
    comp_rle = mask_utils.encode(np.asfortranarray(compressed))
    comp_rle["counts"] = comp_rle["counts"].decode("ascii")
    images = [
        {"id": 1, "file_name": "000000000001.jpg", "height": h, "width": w},  # dog polygon + crowd + RLE
        {"id": 2, "file_name": "000000000002.jpg", "height": h, "width": w},  # has a car
        {"id": 3, "file_name": "000000000003.jpg", "height": h, "width": w},  # has a crowd person
        {"id": 4, "file_name": "000000000004.jpg", "height": 20, "width": w},  # too small for min_size 25
        {"id": 5, "file_name": "000000000005.jpg", "height": h, "width": w},  # no annotation
    ]
    square = [20.0, 5.0, 30.0, 5.0, 30.0, 15.0, 20.0, 15.0]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 18, "segmentation": [square], "iscrowd": 0, "area": 100.0,
         "bbox": [20, 5, 10, 10]},
        {"id": 11, "image_id": 1, "category_id": 18, "segmentation": crowd_rle, "iscrowd": 1, "area": 5.0,
         "bbox": [5, 10, 1, 5]},
        {"id": 12, "image_id": 1, "category_id": 64, "segmentation": comp_rle, "iscrowd": 0, "area": 9.0,
         "bbox": [35, 25, 3, 3]},
        {"id": 20, "image_id": 2, "category_id": 18, "segmentation": [square], "iscrowd": 0, "area": 1.0,
         "bbox": [0, 0, 1, 1]},
        {"id": 21, "image_id": 2, "category_id": 3, "segmentation": [square], "iscrowd": 0, "area": 1.0,
         "bbox": [0, 0, 1, 1]},
        {"id": 30, "image_id": 3, "category_id": 1, "segmentation": crowd_rle, "iscrowd": 1, "area": 1.0,
         "bbox": [0, 0, 1, 1]},
        {"id": 40, "image_id": 4, "category_id": 18, "segmentation": [square[:6] + [20.0, 12.0]], "iscrowd": 0,
         "area": 1.0, "bbox": [0, 0, 1, 1]},
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"},
            {"id": 18, "name": "dog"}, {"id": 64, "name": "potted plant"}]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    for info in images:
        write_rgb(tmp_path / "train2017" / info["file_name"], info["height"], info["width"])
    return tmp_path, {"crowd": crowd.astype(bool), "compressed": compressed.astype(bool)}


def test_coco_json_source(tmp_path):
    root, parts = _write_coco(tmp_path)
    src = CocoOutlierSource(root, min_size=25)
    assert src.fmt == "coco" and src.names == ["000000000001"]
    assert src.dropped == {"000000000002": "excluded class car", "000000000003": "excluded class person",
                           "000000000004": "too small 40x20", "000000000005": "no instance"}
    rgb, mask = src[0]
    assert rgb.shape == (30, 40, 3) and mask.shape == (30, 40) and mask.dtype == bool
    assert mask[parts["crowd"]].all() and mask[parts["compressed"]].all()  # crowd and RLE included
    assert mask[6:15, 21:30].all()  # polygon interior
    assert not mask[0:4].any() and not mask[:, 0:5].any()
    polygon_only = mask & ~parts["crowd"] & ~parts["compressed"]
    assert 90 <= polygon_only.sum() <= 130  # a 10 x 10 square, rasterised by pycocotools
    # the default Meta-OoD size rule (>= 480) drops every image of this tiny file
    with pytest.raises(DatasetError) as exc:
        CocoOutlierSource(root)
    assert one_line(exc).startswith(f"{root}: no usable outlier image (5 dropped")


def test_ood_seg_source_and_missing_source(tmp_path):
    with pytest.raises(DatasetError) as exc:
        CocoOutlierSource(tmp_path)
    assert one_line(exc).startswith(f"{tmp_path}: no COCO outlier source found")
    write_rgb(tmp_path / "train2017/000000000009.jpg", 12, 14)
    mask = np.zeros((12, 14), np.uint8)
    mask[3:6, 4:9] = 254
    write_label(tmp_path / "annotations/ood_seg_train2017/000000000009.png", mask)
    src = CocoOutlierSource(tmp_path)
    assert src.fmt == "ood_seg" and len(src) == 1
    _, m = src[0]
    np.testing.assert_array_equal(m, mask == 254)

