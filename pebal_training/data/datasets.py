"""Readers for the real dataset layouts, exactly as the datasets ship.

* :class:`CityscapesSegmentation`: the official ``leftImg8bit/`` + ``gtFine/`` tree, or PEBAL's flat
  ``images/city_gt_fine/`` + ``annotation/city_gt_fine/`` layout. Items: ``dict(image, label, name)``
  with Cityscapes trainIds (0..18, 255 void; optionally 254 outlier pixels).
* Anomaly benchmarks (:data:`ANOMALY_DATASETS`): Fishyscapes L&F / Static, LostAndFound test, Road
  Anomaly, SegmentMeIfYouCan RoadAnomaly21 / RoadObstacle21. Items: ``dict(image, label, name)`` with
  ``image`` H x W x 3 uint8 RGB and ``label`` H x W uint8 in the unified encoding 0 inlier, 1 anomaly,
  255 void (see :mod:`pebal_training.data.labels`).
* :class:`CocoOutlierSource`: COCO outlier proxies (selected as Meta-OoD's COCO preparation script
  does); items ``(rgb uint8, mask bool)``.

Files are listed in sorted order (deterministic, unlike the reference's ``os.listdir``) and paired by
name, never by position. A wrong or incomplete tree fails at construction with one
:class:`DatasetError` line that names the path and says what was expected. A broken sample (unreadable
file, image/label size mismatch, label values the encoding does not define) raises a
:class:`DatasetError` naming the file when it is read; with ``on_error="skip"`` it is instead counted
in ``skipped`` and ``__getitem__`` returns ``None`` (iterating the dataset, or
:func:`collate_skip_none` in a DataLoader, drops it). Skips are counted per process: under a
multi-worker DataLoader each worker counts its own.

Nothing here imports ROS.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset, default_collate

from pebal_training.data import labels as L

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
ON_ERROR = ("raise", "skip")
_LIST_LIMIT = 5


class DatasetError(ValueError):
    """A dataset tree or file is not what the reader expects (one line, naming the path)."""


# --------------------------------------------------------------------------------------------------
# file helpers


def _require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        what = "not a folder" if path.exists() else "folder missing"
        raise DatasetError(f"{path}: {what} (expected {expected})")
    return path


def _files(folder: Path, exts: Sequence[str], pattern: str = "*") -> list[Path]:
    exts = tuple(e.lower() for e in exts)
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in exts)


def _name_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (", …" if len(names) > _LIST_LIMIT else "")


def _no_label_error(folder: Path, names: Sequence[str], expected: str) -> DatasetError:
    n = len(names)
    noun = "image has" if n == 1 else "images have"
    return DatasetError(f"{folder}: {n} {noun} no label (expected {expected}): {_name_list(list(names))}")


def read_rgb(path: str | Path) -> np.ndarray:
    """Reads an image file as H x W x 3 uint8 RGB (cv2, BGR -> RGB, as the reference)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DatasetError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """Reads a single-channel label PNG as a 2-D integer array (palette PNGs give their indices).

    A 3-channel file whose channels are all equal is accepted (grey saved as RGB); a real colour
    image is rejected: it is a colourised visualisation, not a label map.
    """
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable label image ({exc.__class__.__name__})") from None
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4) and np.array_equal(arr[..., 0], arr[..., 1]) \
                and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise DatasetError(f"{path}: colour label image with {arr.shape[2]} channels "
                               "(expected a single-channel label map)")
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"{path}: not a single-channel integer label map (shape {arr.shape}, {arr.dtype})")
    return arr


def collate_skip_none(batch: list[Any]) -> Any:
    """DataLoader ``collate_fn`` that drops the ``None`` items ``on_error="skip"`` returns."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


# --------------------------------------------------------------------------------------------------
# paired image / label datasets


class _PairedDataset(Dataset):
    """A sorted list of (image, label, name) files with per-sample label conversion."""

    #: Human-readable dataset name, used in messages.
    title = "dataset"

    def __init__(self, on_error: str = "raise", transform: Callable | None = None) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.transform = transform
        self.samples: list[tuple[Path, Path, str]] = []
        #: index -> one-line reason, for samples skipped with ``on_error="skip"``.
        self.skipped: dict[int, str] = {}

    # subclasses implement: raw label array + label path -> converted uint8 label
    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        raise NotImplementedError

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def names(self) -> list[str]:
        return [name for _, _, name in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"

    def load(self, index: int) -> dict[str, Any]:
        """Reads sample ``index``; raises :class:`DatasetError` naming the file on any problem."""
        image_path, label_path, name = self.samples[index]
        image = read_rgb(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(f"{label_path}: label is {raw.shape[1]}x{raw.shape[0]} but its image "
                               f"{image_path.name} is {image.shape[1]}x{image.shape[0]} (W x H)")
        try:
            label = self._convert(raw, label_path)
        except L.LabelValueError as exc:
            raise DatasetError(f"{label_path}: {exc}") from None
        return {"image": image, "label": label, "name": name}

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if index < 0:
            index += len(self)
        try:
            sample = self.load(index)
        except DatasetError as exc:
            if self.on_error == "raise":
                raise
            if index not in self.skipped:
                log.warning("skipping sample %d: %s", index, exc)
            self.skipped[index] = str(exc)
            return None
        if self.transform is not None:
            sample["image"], sample["label"] = self.transform(sample["image"], sample["label"])
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            sample = self[i]
            if sample is not None:
                yield sample


def _pair_by_stem(images: list[Path], label_dir: Path, label_name: Callable[[Path], str],
                  expected: str, missing: str = "raise") -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """Pairs each image with ``label_dir / label_name(image)``; returns (pairs, unlabelled names)."""
    pairs, unlabelled = [], []
    for img in images:
        lab = label_dir / label_name(img)
        if lab.is_file():
            pairs.append((img, lab, img.stem))
        else:
            unlabelled.append(img.name)
    if unlabelled and missing == "raise":
        raise _no_label_error(label_dir, unlabelled, expected)
    return pairs, unlabelled


#: The layout most anomaly-segmentation repositories distribute their validation sets in:
#: ``<set>/images/N.<ext>`` with ``<set>/labels_masks/N.png`` (SMIYC: ``N_labels_semantic.png``).
IMAGES_DIR, LABELS_MASKS_DIR = "images", "labels_masks"
LABELS_MASKS_NAMES = ("{stem}.png", "{stem}_labels_semantic.png")


def has_labels_masks_layout(root: Path) -> bool:
    """True when ``root`` holds the ``images/`` + ``labels_masks/`` layout."""
    return (root / IMAGES_DIR).is_dir() and (root / LABELS_MASKS_DIR).is_dir()


def _scan_labels_masks(root: Path, title: str,
                       missing: str = "raise") -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """Pairs ``images/<stem>.*`` (PNG, JPEG, WebP; other files are left out) with ``labels_masks/<stem>.png``
    or ``labels_masks/<stem>_labels_semantic.png``; returns (pairs, unlabelled image names)."""
    img_dir, lab_dir = root / IMAGES_DIR, root / LABELS_MASKS_DIR
    images = _files(img_dir, IMAGE_EXTS)
    if not images:
        raise DatasetError(f"{img_dir}: no images (expected {title} images/*.png, *.jpg or *.webp)")

    def label_name(img: Path) -> str:  # the first name that exists (the first one when none does)
        names = [pattern.format(stem=img.stem) for pattern in LABELS_MASKS_NAMES]
        return next((name for name in names if (lab_dir / name).is_file()), names[0])

    pairs, unlabelled = _pair_by_stem(images, lab_dir, label_name,
                                      "labels_masks/<stem>.png or <stem>_labels_semantic.png", missing=missing)
    if not pairs:
        raise DatasetError(f"{lab_dir}: none of the {len(images)} images has a label "
                           "(expected <stem>.png or <stem>_labels_semantic.png)")
    return pairs, unlabelled


# --------------------------------------------------------------------------------------------------
# Cityscapes


class CityscapesSegmentation(_PairedDataset):
    """Cityscapes images with trainId labels (0..18, 255 void).

    Two layouts are recognised from ``root``:

    * official: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
      ``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png``; where a trainIds file is absent the
      ``<stem>_gtFine_labelIds.png`` beside it is converted on the fly
      (:func:`~pebal_training.data.labels.label_ids_to_train_ids`);
    * PEBAL flat (the reference code's layout): ``images/city_gt_fine/<split>/*.png`` with
      ``annotation/city_gt_fine/<split>/<stem>_gtFine.png`` (trainIds), ``<stem>`` being the image
      name truncated before ``_leftImg8bit``.

    ``transform``, if given, is called as ``transform(image, label)`` and must return the pair.

    ``allow_outlier_label=True`` (config ``data.inlier_outlier_label``) also accepts 254
    (:data:`~pebal_perception.core.constants.OUTLIER_LABEL`) in a ``labelTrainIds`` file: outlier
    pixels of an inlier frame (e.g. objects pasted on its road), which the training losses treat
    exactly as pasted outlier-exposure pixels. By default a 254 is a :class:`DatasetError`.
    """

    title = "Cityscapes"
    IMAGE_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: str | Path, split: str = "train", on_error: str = "raise",
                 transform: Callable | None = None, allow_outlier_label: bool = False) -> None:
        super().__init__(on_error, transform)
        self.root = Path(root)
        self.split = split
        self.allow_outlier_label = bool(allow_outlier_label)
        if (self.root / "leftImg8bit").is_dir():
            self.layout = "cityscapes"
            self._scan_official()
        elif (self.root / "images" / "city_gt_fine").is_dir():
            self.layout = "pebal_flat"
            self._scan_flat()
        else:
            raise DatasetError(
                f"{self.root}: not a Cityscapes root (expected leftImg8bit/<split>/<city>/*_leftImg8bit.png "
                "with gtFine/<split>/<city>/, or the flat images/city_gt_fine/<split>/*.png with "
                "annotation/city_gt_fine/<split>/)")

    def _scan_official(self) -> None:
        img_dir = _require_dir(self.root / "leftImg8bit" / self.split,
                               f"leftImg8bit/{self.split}/<city>/*{self.IMAGE_SUFFIX}")
        gt_dir = _require_dir(self.root / "gtFine" / self.split,
                              f"gtFine/{self.split}/<city>/*_gtFine_labelTrainIds.png beside leftImg8bit/")
        images = sorted(p for p in img_dir.glob(f"*/*{self.IMAGE_SUFFIX}") if p.is_file())
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected <city>/*{self.IMAGE_SUFFIX})")
        missing = []
        for img in images:
            stem = img.name[: -len(self.IMAGE_SUFFIX)]
            city_gt = gt_dir / img.parent.name
            train_ids = city_gt / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = city_gt / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.samples.append((img, train_ids, stem))
            elif label_ids.is_file():  # converted on read
                self.samples.append((img, label_ids, stem))
            else:
                missing.append(f"{img.parent.name}/{img.name}")
        if missing:
            raise _no_label_error(gt_dir, missing, "<city>/<stem>_gtFine_labelTrainIds.png or _gtFine_labelIds.png")

    def _scan_flat(self) -> None:
        img_dir = _require_dir(self.root / "images" / "city_gt_fine" / self.split,
                               f"images/city_gt_fine/{self.split}/*.png")
        ann_dir = _require_dir(self.root / "annotation" / "city_gt_fine" / self.split,
                               f"annotation/city_gt_fine/{self.split}/<stem>_gtFine.png beside images/")
        images = _files(img_dir, (".png",))
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected *.png)")

        def label_name(img: Path) -> str:
            return f"{img.name.split('_leftImg8bit')[0] if '_leftImg8bit' in img.name else img.stem}_gtFine.png"

        pairs, _ = _pair_by_stem(images, ann_dir, label_name, "<stem>_gtFine.png")
        self.samples = [(img, lab, lab.name[: -len("_gtFine.png")]) for img, lab, _ in pairs]

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        if label_path.name.endswith("_gtFine_labelIds.png"):
            return L.label_ids_to_train_ids(raw)
        return L.check_train_ids(raw, allow_outlier=self.allow_outlier_label)


# --------------------------------------------------------------------------------------------------
# anomaly benchmarks


class FishyscapesDataset(_PairedDataset):
    """Fishyscapes L&F / Static validation. Two layouts are recognised:

    * the SynBoost-preprocessed release (which the reference evaluates on): ``<root>/<subset>/original/*.png``
      with ``<root>/<subset>/labels/<same name>.png``; the other SynBoost folders (entropy, semantic, ...)
      are ignored;
    * the layout most anomaly-segmentation repositories distribute: ``<root>/images/N.<png|jpg|webp>``
      with ``<root>/labels_masks/N.png`` (``root`` is the set's own folder).

    Labels are already 0 / 1 / 255.
    """

    title = "Fishyscapes"
    SUBSETS = ("LostAndFound", "Static")

    def __init__(self, root: str | Path, subset: str = "LostAndFound", on_error: str = "raise",
                 transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        if subset not in self.SUBSETS:
            raise DatasetError(f"unknown Fishyscapes subset {subset!r} (expected one of {self.SUBSETS})")
        self.root = Path(root)
        self.subset = subset
        if has_labels_masks_layout(self.root):
            self.layout = "labels_masks"
            self.samples, _ = _scan_labels_masks(self.root, f"Fishyscapes {subset}")
            return
        self.layout = "synboost"
        base = self.root / subset
        if not base.is_dir() and self.root.name == subset and (self.root / "original").is_dir():
            base = self.root  # root already points at the subset folder
        _require_dir(base, f"{subset}/original/*.png and {subset}/labels/*.png under the Fishyscapes root, "
                           "or images/* with labels_masks/*.png")
        img_dir = _require_dir(base / "original", "original/*.png")
        lab_dir = _require_dir(base / "labels", "labels/*.png beside original/")
        images = _files(img_dir, (".png",))
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected original/*.png)")
        self.samples, _ = _pair_by_stem(images, lab_dir, lambda p: f"{p.stem}.png", "labels/<name>.png")

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        return L.fishyscapes_to_unified(raw)


class RoadAnomalyDataset(_PairedDataset):
    """Road Anomaly: the SynBoost-preprocessed release (``original/*.jpg`` with ``labels/<stem>.png``) or
    the ``images/N.jpg`` + ``labels_masks/N.png`` layout of most anomaly-segmentation repositories.

    ``encoding="synboost"`` expects 0 / 1 labels; ``"epfl"`` reads the original release's 0 / 2
    encoding; ``"auto"`` (the default) tells them apart per file (see
    :func:`~pebal_training.data.labels.road_anomaly_to_unified`).
    """

    title = "Road Anomaly"

    ENCODINGS = ("auto", "synboost", "epfl")

    def __init__(self, root: str | Path, encoding: str = "auto", on_error: str = "raise",
                 transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        if encoding not in self.ENCODINGS:
            raise ValueError(f"unknown Road Anomaly encoding {encoding!r} (expected one of {self.ENCODINGS})")
        self.root = Path(root)
        self.encoding = encoding
        if has_labels_masks_layout(self.root):
            self.layout = "labels_masks"
            self.samples, _ = _scan_labels_masks(self.root, "Road Anomaly")
            return
        self.layout = "synboost"
        img_dir = _require_dir(self.root / "original", "original/*.jpg and labels/*.png under the Road Anomaly root, "
                               "or images/* with labels_masks/*.png")
        lab_dir = _require_dir(self.root / "labels", "labels/*.png beside original/")
        images = _files(img_dir, IMAGE_EXTS)
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected original/*.jpg)")
        self.samples, _ = _pair_by_stem(images, lab_dir, lambda p: f"{p.stem}.png", "labels/<stem>.png")

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        return L.road_anomaly_to_unified(raw, self.encoding)


class LostAndFoundDataset(_PairedDataset):
    """LostAndFound (``test`` split by default): ``leftImg8bit/<split>/<seq>/<stem>_leftImg8bit.png``
    with ``gtCoarse/<split>/<seq>/<stem>_gtCoarse_labelTrainIds.png``, or the ``_gtCoarse_labelIds.png``
    beside it converted with the LostAndFound table. Unified: free road 0, obstacle 1, the rest 255.
    The ``images/`` + ``labels_masks/`` layout of most anomaly-segmentation repositories (labels already
    0 / 1 / 255) is read too.
    """

    title = "LostAndFound"
    IMAGE_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: str | Path, split: str = "test", on_error: str = "raise",
                 transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        self.root = Path(root)
        self.split = split
        if has_labels_masks_layout(self.root):
            self.layout = "labels_masks"
            self.samples, _ = _scan_labels_masks(self.root, "LostAndFound")
            return
        self.layout = "cityscapes"
        img_dir = _require_dir(self.root / "leftImg8bit" / split,
                               f"leftImg8bit/{split}/<sequence>/*{self.IMAGE_SUFFIX}")
        gt_dir = _require_dir(self.root / "gtCoarse" / split,
                              f"gtCoarse/{split}/<sequence>/*_gtCoarse_labelTrainIds.png beside leftImg8bit/")
        images = sorted(p for p in img_dir.glob(f"*/*{self.IMAGE_SUFFIX}") if p.is_file())
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected <sequence>/*{self.IMAGE_SUFFIX})")
        missing = []
        for img in images:
            stem = img.name[: -len(self.IMAGE_SUFFIX)]
            seq_gt = gt_dir / img.parent.name
            for candidate in (seq_gt / f"{stem}_gtCoarse_labelTrainIds.png", seq_gt / f"{stem}_gtCoarse_labelIds.png"):
                if candidate.is_file():
                    self.samples.append((img, candidate, stem))
                    break
            else:
                missing.append(f"{img.parent.name}/{img.name}")
        if missing:
            raise _no_label_error(gt_dir, missing,
                                  "<sequence>/<stem>_gtCoarse_labelTrainIds.png or _gtCoarse_labelIds.png")

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        if self.layout == "labels_masks":
            return L.fishyscapes_to_unified(raw)
        if label_path.name.endswith("_gtCoarse_labelIds.png"):
            return L.laf_label_ids_to_unified(raw)
        return L.laf_train_ids_to_unified(raw)


class SegmentMeIfYouCanDataset(_PairedDataset):
    """SegmentMeIfYouCan RoadAnomaly21 (``track="anomaly"``) / RoadObstacle21 (``track="obstacle"``).

    ``root`` is the ``dataset_AnomalyTrack`` / ``dataset_ObstacleTrack`` folder: ``images/*`` (.jpg,
    .png or .webp) with ``labels_masks/<stem>_labels_semantic.png`` (0 not anomaly, 1 anomaly,
    255 void; the ``*_labels_semantic_color.png`` visualisations are ignored).

    The benchmark only publishes labels for its validation images; the test images in the same
    ``images/`` folder have none. ``unlabelled="drop"`` (the default here) leaves those out and lists
    them in ``unlabelled``; ``unlabelled="raise"`` treats them as an incomplete tree.
    """

    title = "SegmentMeIfYouCan"
    TRACKS = {"anomaly": "RoadAnomaly21", "obstacle": "RoadObstacle21"}

    def __init__(self, root: str | Path, track: str = "anomaly", unlabelled: str = "drop",
                 on_error: str = "raise", transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        if track not in self.TRACKS:
            raise DatasetError(f"unknown SegmentMeIfYouCan track {track!r} (expected one of {tuple(self.TRACKS)})")
        if unlabelled not in ("drop", "raise"):
            raise ValueError(f"unlabelled must be 'drop' or 'raise', got {unlabelled!r}")
        self.root = Path(root)
        self.track = track
        _require_dir(self.root / IMAGES_DIR,
                     f"images/* and labels_masks/*_labels_semantic.png ({self.TRACKS[track]})")
        _require_dir(self.root / LABELS_MASKS_DIR, "labels_masks/*_labels_semantic.png beside images/")
        self.layout = "labels_masks"
        self.samples, self.unlabelled = _scan_labels_masks(self.root, self.TRACKS[track], missing=unlabelled)

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        return L.smiyc_to_unified(raw)


#: name -> factory ``(root, **options) -> dataset`` for every anomaly benchmark.
ANOMALY_DATASETS: dict[str, Callable[..., _PairedDataset]] = {
    "fishyscapes_laf": partial(FishyscapesDataset, subset="LostAndFound"),
    "fishyscapes_static": partial(FishyscapesDataset, subset="Static"),
    "lostandfound": LostAndFoundDataset,
    "road_anomaly": RoadAnomalyDataset,
    "smiyc_anomaly": partial(SegmentMeIfYouCanDataset, track="anomaly"),
    "smiyc_obstacle": partial(SegmentMeIfYouCanDataset, track="obstacle"),
}


def open_anomaly_dataset(name: str, root: str | Path, **options: Any) -> _PairedDataset:
    """Opens the anomaly benchmark ``name`` (a key of :data:`ANOMALY_DATASETS`) at ``root``."""
    try:
        factory = ANOMALY_DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown anomaly dataset {name!r} "
                           f"(expected one of {', '.join(ANOMALY_DATASETS)})") from None
    return factory(root, **options)


# --------------------------------------------------------------------------------------------------
# COCO outlier proxies (the selection of Meta-OoD's COCO preparation script)

#: COCO classes that may appear in driving scenes; an image holding any of them is not an outlier.
EXCLUDED_COCO_NAMES = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign")
#: The same classes by 0-based COCO-80 index (YOLO label files).
EXCLUDED_COCO80 = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle", 5: "bus", 7: "truck",
                   9: "traffic light", 11: "stop sign"}
EXCLUDED_COCO80_INDICES = frozenset(EXCLUDED_COCO80)
#: Meta-OoD / PEBAL keep images whose height and width are both at least this.
DEFAULT_MIN_SIZE = 480


class CocoOutlierSource(Dataset):
    """COCO outlier objects: ``source[i] -> (rgb uint8 H x W x 3, mask bool H x W)``.

    The mask is the union of every instance of the image (crowd included). Images holding any
    instance of :data:`EXCLUDED_COCO_NAMES` are dropped, and so are images smaller than
    ``min_size`` in height or width (pass ``min_size=0`` to keep small samples) and images without
    any instance (nothing to paste).

    Formats (``fmt``; ``"auto"`` picks from what ``root`` holds):

    * ``"coco"``: ``annotations/instances_<split>.json`` + ``<split>/*.jpg``, read with pycocotools;
    * ``"yolo"``: YOLO-seg ``images/*.jpg`` + ``labels/<stem>.txt`` (one instance per line:
      ``<cls> x1 y1 x2 y2 ...``, COCO-80 0-based class, coordinates normalised by width/height),
      polygons rasterised with ``cv2.fillPoly``; an image without a label file has no instance;
    * ``"ood_seg"``: the masks Meta-OoD's preparation script writes and PEBAL reads,
      ``annotations/ood_seg_<split>/<name>.png`` (254 on objects) + ``<split>/<name>.jpg``; the class
      and size filters were applied when those masks were made.

    After construction ``names`` lists the kept images and ``dropped`` maps each dropped image's
    name to why (``"excluded class <name>"``, ``"too small WxH"``, ``"no instance"``).
    """

    FORMATS = ("auto", "coco", "yolo", "ood_seg")

    def __init__(self, root: str | Path, fmt: str = "auto", split: str = "train2017",
                 min_size: int = DEFAULT_MIN_SIZE, annotation_file: str | Path | None = None) -> None:
        if fmt not in self.FORMATS:
            raise ValueError(f"fmt must be one of {self.FORMATS}, got {fmt!r}")
        self.root = Path(root)
        self.split = split
        self.min_size = int(min_size)
        self.dropped: dict[str, str] = {}
        ann_file = Path(annotation_file) if annotation_file else self.root / "annotations" / f"instances_{split}.json"
        if fmt == "auto":
            if annotation_file or ann_file.is_file():
                fmt = "coco"
            elif (self.root / "images").is_dir() and (self.root / "labels").is_dir():
                fmt = "yolo"
            elif (self.root / "annotations" / f"ood_seg_{split}").is_dir():
                fmt = "ood_seg"
            else:
                raise DatasetError(
                    f"{self.root}: no COCO outlier source found (expected annotations/instances_{split}.json "
                    f"with {split}/*.jpg, YOLO-seg images/ + labels/, or annotations/ood_seg_{split}/*.png)")
        self.fmt = fmt
        # Each entry: (image path, name, payload); payload depends on the format.
        self._entries: list[tuple[Path, str, Any]] = []
        if fmt == "coco":
            self._scan_coco(ann_file)
        elif fmt == "yolo":
            self._scan_yolo()
        else:
            self._scan_ood_seg()
        if not self._entries:
            raise DatasetError(f"{self.root}: no usable outlier image ({len(self.dropped)} dropped: "
                               f"{_name_list([f'{k} ({v})' for k, v in self.dropped.items()])})")

    # -- scanning ----------------------------------------------------------------------------------

    def _too_small(self, name: str, width: int, height: int) -> bool:
        if min(width, height) < self.min_size:
            self.dropped[name] = f"too small {width}x{height}"
            return True
        return False

    def _scan_coco(self, ann_file: Path) -> None:
        from pycocotools.coco import COCO  # imported lazily: only this format needs it

        if not ann_file.is_file():
            raise DatasetError(f"{ann_file}: file missing (expected COCO instances JSON)")
        img_dir = _require_dir(self.root / self.split, f"{self.split}/*.jpg beside annotations/")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
                coco = COCO(str(ann_file))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:
            raise DatasetError(f"{ann_file}: not a COCO instances file ({exc.__class__.__name__}: {exc})") from None
        cat_names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        excluded_ids = {cid for cid, n in cat_names.items() if n in EXCLUDED_COCO_NAMES}
        for img_id in sorted(coco.getImgIds()):
            info = coco.imgs[img_id]
            name = Path(info["file_name"]).stem
            anns = coco.imgToAnns.get(img_id, [])
            bad = sorted({cat_names.get(a["category_id"], str(a["category_id"]))
                          for a in anns if a["category_id"] in excluded_ids})
            if bad:
                self.dropped[name] = f"excluded class {', '.join(bad)}"
                continue
            if self._too_small(name, int(info["width"]), int(info["height"])):
                continue
            segs = [a["segmentation"] for a in anns if a.get("segmentation")]
            if not segs:
                self.dropped[name] = "no instance"
                continue
            self._entries.append((img_dir / info["file_name"], name, (int(info["height"]), int(info["width"]), segs)))

    def _scan_yolo(self) -> None:
        img_dir = _require_dir(self.root / "images", "images/*.jpg and labels/*.txt (YOLO-seg)")
        lab_dir = _require_dir(self.root / "labels", "labels/*.txt beside images/")
        if (img_dir / self.split).is_dir():  # ultralytics layout images/<split>/, labels/<split>/
            img_dir = img_dir / self.split
            lab_dir = _require_dir(lab_dir / self.split, f"labels/{self.split}/*.txt beside images/{self.split}/")
        images = _files(img_dir, IMAGE_EXTS)
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected *.jpg)")
        for img in images:
            name = img.stem
            polygons = parse_yolo_seg(lab_dir / f"{name}.txt")
            bad = sorted({int(c) for c, _ in polygons if c in EXCLUDED_COCO80_INDICES})
            if bad:
                self.dropped[name] = f"excluded class {', '.join(EXCLUDED_COCO80[c] for c in bad)}"
                continue
            try:
                with Image.open(img) as im:
                    width, height = im.size
            except OSError:
                raise DatasetError(f"{img}: not a readable image") from None
            if self._too_small(name, width, height):
                continue
            if not polygons:
                self.dropped[name] = "no instance"
                continue
            self._entries.append((img, name, polygons))

    def _scan_ood_seg(self) -> None:
        mask_dir = _require_dir(self.root / "annotations" / f"ood_seg_{self.split}",
                                f"annotations/ood_seg_{self.split}/*.png")
        img_dir = _require_dir(self.root / self.split, f"{self.split}/*.jpg beside annotations/")
        masks = _files(mask_dir, (".png",))
        if not masks:
            raise DatasetError(f"{mask_dir}: no masks (expected *.png with 254 on the objects)")
        missing = []
        for mask in masks:
            img = img_dir / f"{mask.stem}.jpg"
            if img.is_file():
                self._entries.append((img, mask.stem, mask))
            else:
                missing.append(f"{mask.stem}.jpg")
        if missing:
            raise DatasetError(f"{img_dir}: {len(missing)} masks have no image: {_name_list(missing)}")

    # -- access ------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [name for _, name, _ in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CocoOutlierSource({self.fmt}, {len(self)} images, {len(self.dropped)} dropped)"

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path, name, payload = self._entries[index]
        rgb = read_rgb(path)
        h, w = rgb.shape[:2]
        if self.fmt == "coco":
            mask = coco_segmentations_to_mask(payload[2], payload[0], payload[1])
            if mask.shape != (h, w):
                raise DatasetError(f"{path}: image is {w}x{h} but its annotation says {payload[1]}x{payload[0]}")
        elif self.fmt == "yolo":
            mask = rasterize_yolo_polygons([poly for _, poly in payload], h, w)
        else:
            raw = read_label(payload)
            if raw.shape != (h, w):
                raise DatasetError(f"{payload}: mask is {raw.shape[1]}x{raw.shape[0]} but {path.name} is {w}x{h}")
            mask = raw == L.OUTLIER_LABEL
        return rgb, mask


def parse_yolo_seg(path: Path) -> list[tuple[int, np.ndarray]]:
    """Parses a YOLO-seg label file into ``[(class, polygon N x 2 normalised xy)]``.

    A missing file means "no instance" (YOLO convention). A malformed line raises
    :class:`DatasetError` naming ``file:line``.
    """
    if not path.is_file():
        return []
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            cls = int(tokens[0])
            coords = np.asarray([float(t) for t in tokens[1:]], dtype=np.float64)
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: not '<class> x1 y1 x2 y2 ...' numbers") from None
        if cls < 0 or coords.size < 6 or coords.size % 2:
            raise DatasetError(f"{path}:{lineno}: expected a class index >= 0 and at least 3 x,y pairs, "
                               f"got class {cls} and {coords.size} coordinates")
        if not np.all(np.isfinite(coords)):
            raise DatasetError(f"{path}:{lineno}: non-finite coordinate")
        out.append((cls, coords.reshape(-1, 2)))
    return out


def rasterize_yolo_polygons(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Union of normalised ``N x 2`` (x, y) polygons filled with ``cv2.fillPoly`` at ``height x width``.

    Vertices are scaled by the image size and rounded to the nearest pixel; the filled region
    includes the polygon's boundary pixels (``cv2.fillPoly`` semantics).
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    if len(polygons):
        scale = np.array([width, height], dtype=np.float64)
        pts = [np.round(np.asarray(p, dtype=np.float64) * scale).astype(np.int32).reshape(-1, 1, 2)
               for p in polygons]
        cv2.fillPoly(mask, pts, 1)
    return mask.astype(bool)


def coco_segmentations_to_mask(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Union of COCO ``segmentation`` entries (polygon lists, uncompressed or compressed RLE)."""
    import warnings

    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=bool)
    for seg in segmentations:
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE (crowd)
            rle = mask_utils.frPyObjects(seg, height, width)
        else:  # compressed RLE
            rle = dict(seg)
            if isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode("ascii")
        with warnings.catch_warnings():  # pycocotools' Cython buffer predates NumPy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            mask |= mask_utils.decode(rle).astype(bool)
    return mask
