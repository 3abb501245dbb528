"""COCO outlier proxies, selected as Meta-OoD's COCO preparation script does, and the mask helpers.

:class:`CocoOutlierSource` reads COCO JSON, YOLO-seg or Meta-OoD ``ood_seg`` masks; items are
``(rgb uint8, mask bool)``.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from pebal_training.data import labels as L
from pebal_training.data.paired import IMAGE_EXTS, DatasetError, list_files, read_label, read_rgb, require_dir, \
    short_name_list


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
                               f"{short_name_list([f'{k} ({v})' for k, v in self.dropped.items()])})")

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
        img_dir = require_dir(self.root / self.split, f"{self.split}/*.jpg beside annotations/")
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
        img_dir = require_dir(self.root / "images", "images/*.jpg and labels/*.txt (YOLO-seg)")
        lab_dir = require_dir(self.root / "labels", "labels/*.txt beside images/")
        if (img_dir / self.split).is_dir():  # ultralytics layout images/<split>/, labels/<split>/
            img_dir = img_dir / self.split
            lab_dir = require_dir(lab_dir / self.split, f"labels/{self.split}/*.txt beside images/{self.split}/")
        images = list_files(img_dir, IMAGE_EXTS)
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
        mask_dir = require_dir(self.root / "annotations" / f"ood_seg_{self.split}",
                                f"annotations/ood_seg_{self.split}/*.png")
        img_dir = require_dir(self.root / self.split, f"{self.split}/*.jpg beside annotations/")
        masks = list_files(mask_dir, (".png",))
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
            raise DatasetError(f"{img_dir}: {len(missing)} masks have no image: {short_name_list(missing)}")

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
