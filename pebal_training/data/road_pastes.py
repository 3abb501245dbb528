"""Real road frames with obstacles pasted *on the road*, plus augmented normal frames: an evaluation set
for what a planner would receive (share of normal frames with a false obstacle, share of pasted on-road
obstacles found).

Pieces (plain functions, numpy / OpenCV only, nothing here imports ROS or torch):

* object cutouts: :func:`rendered_obstacle_cutouts` (crates, tyres, debris, rocks, animals, boxes from the
  procedural renderer :mod:`pebal_training.data.synthetic`) and :func:`coco_cutouts` (COCO instance
  polygons from a YOLO-seg folder); each a :class:`Cutout` cropped to its box;
* :func:`road_geometry`: horizon row and pixels-per-metre per row from a road mask (the caller supplies
  the mask: the base model's road prediction or ground truth);
* :func:`paste_on_road`: perspective-scaled pastes with their bottom-centre on interior road pixels, an
  exact instance map and per-instance metadata;
* :func:`normal_variants`: photometric / mild geometric variants of a normal frame;
* :func:`load_real_frames` / :func:`cityscapes_gt_road`: the real frames of ``shared/assets``;
* :func:`build_road_benchmark`: normal and pasted samples per real frame, named ``<scene>_nXX`` /
  ``<scene>_pXX``.

Honest limits: a paste is a 2-D composite (no shadow, no contact shading, lighting only roughly matched),
so a detector may find it by its seams; the scale model assumes a flat road of known width seen by an
un-rolled camera; augmented variants of one scene are strongly correlated (see :func:`normal_variants`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

#: COCO-80 class names (0-based YOLO index).
COCO80_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: Fraction of the image height at the bottom never used for placements (the ego vehicle's hood).
HOOD_FRACTION = 0.08


#: The real scenes (``load_real_frames`` names) by role, one fixed split used everywhere: fine-tuning the
#: real-roads model (``recipes/real_roads.py``; the post-processing defaults were also chosen looking at
#: these), calibrating the threshold, and the reported numbers (``bench/bench_planner.py``).
TRAIN_SCENES = ("straight_lines1", "test1", "test4", "frankfurt_000000_000576")
CALIBRATION_SCENES = ("straight_lines2", "test2")
REPORT_SCENES = ("test3", "test5", "test6", "frankfurt_000000_000294")
#: COCO sample images whose objects are only ever pasted for evaluation, never for training.
HELD_OUT_COCO = ("000000000263", "000000000394", "000000000502", "000000000575")
#: Rendered obstacles: training renders use seeds below this, evaluation renders seeds from it up.
EVALUATION_RENDER_SEED = 1000

@dataclass
class Cutout:
    """One object to paste: ``rgb`` ``h x w x 3`` uint8 and ``mask`` ``h x w`` bool, cropped to the mask's
    box (so the first/last rows and columns hold object pixels); ``kind`` its class (``"crate"``,
    ``"dog"``...), ``name`` a unique id of the source instance."""

    rgb: np.ndarray
    mask: np.ndarray
    kind: str
    name: str


@dataclass
class RealFrame:
    """One real camera frame: ``name`` (file stem, ``_leftImg8bit`` dropped), ``rgb`` uint8, ``camera``
    (``"udacity"`` or ``"cityscapes"``)."""

    name: str
    rgb: np.ndarray
    camera: str


@dataclass
class Sample:
    """One benchmark sample.  ``scene`` is the source frame's name (split train / test by it, never by
    sample); ``instances`` ``H x W`` int32 (0 background, 1..k pasted objects; all zero when ``normal``);
    ``meta`` one dict per instance (see :func:`paste_on_road`)."""

    name: str
    scene: str
    rgb: np.ndarray
    instances: np.ndarray
    meta: list[dict[str, Any]] = field(default_factory=list)
    normal: bool = True


@dataclass
class RoadGeometry:
    """Flat-road scale model from a road mask: pixels per metre at row ``v`` is
    ``slope * (v - horizon_row)`` (the fitted road width at ``v`` divided by the assumed road width).
    ``fit_ok`` is False when the horizon fell back to the topmost road row."""

    horizon_row: float
    slope: float
    fit_ok: bool
    road_width_m: float

    def px_per_m(self, row: float | np.ndarray) -> float | np.ndarray:
        return np.maximum(self.slope * (np.asarray(row, dtype=np.float64) - self.horizon_row), 0.0)


# -- cutouts -----------------------------------------------------------------------------------------------

def _crop_to_mask(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return np.ascontiguousarray(rgb[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1])


def rendered_obstacle_cutouts(num: int, seed: int, size: tuple[int, int] = (512, 1024),
                              min_area: int = 200, max_scenes: int | None = None) -> list[Cutout]:
    """Render procedural scenes (``size`` = ``(height, width)``) and cut out up to ``num`` anomaly
    instances (connected components of the renderer's anomaly map, at least ``min_area`` pixels, not
    touching the image border), each cropped to its box; ``kind`` is the renderer's anomaly kind.

    The scene config asks for 1-3 anomalies per scene at 5-16 m (so the cutouts are large enough) and
    little traffic (fewer occluders, faster).  Deterministic in ``seed``.  A 512 x 1024 scene takes about
    0.1 s on one core; at most ``max_scenes`` (default ``2 * num + 4``) scenes are rendered, so fewer than
    ``num`` cutouts may come back.
    """
    from pebal_training.data.synthetic import SceneConfig, generate_scene

    height, width = int(size[0]), int(size[1])
    cfg = SceneConfig(height=height, width=width, anomaly_count_range=(1, 3), anomaly_distance_range=(5.0, 16.0),
                      anomaly_size_range=(0.4, 1.4), car_count_range=(0, 2), person_count_range=(0, 1),
                      ego_hood_prob=0.0)
    limit = (2 * num + 4) if max_scenes is None else int(max_scenes)
    out: list[Cutout] = []
    for i in range(limit):
        if len(out) >= num:
            break
        scene = generate_scene(np.random.default_rng((int(seed), i)), cfg)
        anomaly = (scene.anomaly == 1).astype(np.uint8)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(anomaly, connectivity=8)
        for c in range(1, n):
            if len(out) >= num:
                break
            x, y, w, h, area = (int(v) for v in stats[c])
            if area < min_area or x == 0 or y == 0 or x + w >= width or y + h >= height:
                continue
            # kind: the obstacle whose box overlaps this component most
            kind, best = "obstacle", 0
            for ob in scene.obstacles:
                bx0, by0, bx1, by1 = ob.bbox
                ov = max(0, min(bx1, x + w) - max(bx0, x)) * max(0, min(by1, y + h) - max(by0, y))
                if ov > best:
                    kind, best = ob.kind, ov
            mask = comp[y:y + h, x:x + w] == c
            out.append(Cutout(scene.image[y:y + h, x:x + w].copy(), mask, kind, f"render{seed}_{i}_{c}"))
    return out


def coco_cutouts(root: str | Path, names: Sequence[str] | None = None, min_area: int = 400) -> list[Cutout]:
    """Every instance polygon of a YOLO-seg folder (``root/images/*.jpg`` + ``root/labels/<stem>.txt``) as a
    cutout, ``kind`` the COCO class name; instances of Cityscapes-like classes (person, car, ...; see
    :data:`pebal_training.data.datasets.EXCLUDED_COCO80`) and instances under ``min_area`` pixels are
    skipped.  ``names`` restricts to those image stems.  Sorted by image name, then line order."""
    from pebal_training.data.datasets import (EXCLUDED_COCO80_INDICES, parse_yolo_seg, rasterize_yolo_polygons,
                                              read_rgb)

    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise FileNotFoundError(f"{root}: expected a YOLO-seg folder with images/ and labels/")
    wanted = None if names is None else set(names)
    out: list[Cutout] = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        if wanted is not None and img.stem not in wanted:
            continue
        polygons = parse_yolo_seg(lab_dir / f"{img.stem}.txt")
        if not polygons:
            continue
        rgb = read_rgb(img)
        h, w = rgb.shape[:2]
        for k, (cls, poly) in enumerate(polygons):
            if cls in EXCLUDED_COCO80_INDICES:
                continue
            mask = rasterize_yolo_polygons([poly], h, w)
            if int(mask.sum()) < min_area:
                continue
            crop = _crop_to_mask(rgb, mask)
            if crop is None:
                continue
            kind = COCO80_NAMES[cls] if cls < len(COCO80_NAMES) else f"coco{cls}"
            out.append(Cutout(crop[0], crop[1], kind, f"{img.stem}_{k}"))
    return out


# -- road geometry ---------------------------------------------------------------------------------------

def road_geometry(road: np.ndarray, road_width_m: float = 7.0, horizon_row: float | None = None,
                  min_rows: int = 5, camera_height_m: float | None = None) -> RoadGeometry | None:
    """Horizon row and the pixels-per-metre model of a road mask (``None`` without usable road).

    The road's width per row (pixel count) is fitted by a robust line over the road rows without the
    hood rows (the bottom :data:`HOOD_FRACTION`) and, when enough others remain, without the rows where
    the road reaches within 1 % of the left or right image border (their width is truncated) and without
    the top 20 % of the remaining rows' extent (far, noisy).  Without a
    given ``horizon_row`` the horizon is where that line reaches zero width; when the fit fails (too few
    rows, width not growing downwards, or an implausible apex) it is the topmost road row and
    ``fit_ok`` is False.  The scale slope is then refitted through the horizon:
    ``road width(v) ~ slope * road_width_m * (v - horizon)``.  With ``camera_height_m`` the slope is
    instead the flat-ground pinhole value ``1 / camera_height_m`` (square pixels: ``fx / z`` pixels per
    metre at distance ``z``, whose ground row is ``v - horizon = fy * height / z``), independent of how
    wide the road is; only the horizon then comes from the mask.
    """
    road = np.asarray(road, dtype=bool)
    if road.ndim != 2:
        raise ValueError(f"road mask must be 2-D, got shape {road.shape}")
    from pebal_perception.core.road import road_width_rows, robust_line

    h = road.shape[0]
    selected = road_width_rows(road, HOOD_FRACTION, min_rows)
    if selected is None:
        return None
    top = int(np.flatnonzero(road.sum(axis=1) >= max(3.0, 0.01 * road.shape[1]))[0])
    sel, wid = selected
    v = sel.astype(np.float64)
    fit_ok = horizon_row is not None
    if horizon_row is None:
        line = robust_line(v, wid) if sel.size >= min_rows else None
        if line is not None and line[0] > 0:
            vh = -line[1] / line[0]
            if -h <= vh < float(sel.min()):
                horizon_row, fit_ok = vh, True
        if horizon_row is None:
            horizon_row = float(top)
    if camera_height_m is not None:
        if camera_height_m <= 0:
            raise ValueError("camera_height_m must be > 0")
        return RoadGeometry(float(horizon_row), 1.0 / float(camera_height_m), fit_ok, float(road_width_m))
    dv = v - float(horizon_row)
    ok = dv > 0
    if not ok.any():
        return None
    slope_px = float(np.sum(wid[ok] * dv[ok]) / np.sum(dv[ok] ** 2))
    if slope_px <= 0:
        return None
    return RoadGeometry(float(horizon_row), slope_px / float(road_width_m), fit_ok, float(road_width_m))


def estimate_horizon(road: np.ndarray) -> float | None:
    """The horizon row of :func:`road_geometry` (``None`` without usable road)."""
    geo = road_geometry(road)
    return None if geo is None else geo.horizon_row


def interior_road(road: np.ndarray, horizon_row: float, erode_fraction: float = 0.03,
                  horizon_margin: float = 0.12) -> np.ndarray:
    """Candidate bottom-centre pixels: the road eroded by ``erode_fraction`` of the image height, without
    the bottom :data:`HOOD_FRACTION` of the image and without the rows within ``horizon_margin`` of the
    way from the horizon to the bottom (far, tiny, unreliable)."""
    road = np.asarray(road, dtype=bool)
    h, w = road.shape
    r = max(1, int(round(erode_fraction * h)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    inner = cv2.erode(road.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    inner[int(np.ceil(h * (1.0 - HOOD_FRACTION))):] = False
    vh = max(float(horizon_row), 0.0)
    inner[:max(0, int(np.ceil(vh + horizon_margin * (h - vh))))] = False
    return inner


# -- pasting ---------------------------------------------------------------------------------------------

def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _paste_one(out: np.ndarray, instances: np.ndarray, road: np.ndarray, cut: Cutout, v: int, u: int,
               width_px: int, new_id: int, rng: np.random.Generator) -> int:
    """Scales ``cut`` to ``width_px`` wide, composites it with its bottom-centre at ``(v, u)``; returns the
    number of pixels written into ``instances`` (0 when nothing landed in the image)."""
    H, W = instances.shape
    ch, cw = cut.mask.shape
    height_px = max(1, int(round(ch * width_px / cw)))
    height_px = min(height_px, 2 * H)
    interp = cv2.INTER_AREA if width_px < cw else cv2.INTER_LINEAR
    rgb = cv2.resize(cut.rgb, (width_px, height_px), interpolation=interp).astype(np.float32)
    alpha = cv2.resize(cut.mask.astype(np.float32), (width_px, height_px), interpolation=interp)
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    hard = alpha >= 0.5
    if not hard.any():
        return 0
    # 1-px feather, inwards only (no background halo); every instance pixel keeps alpha >= 0.5
    soft = cv2.GaussianBlur(hard.astype(np.float32), (3, 3), 0.8)
    soft = np.where(hard, np.maximum(soft, 0.5), 0.0).astype(np.float32)
    top, left = v - height_px + 1, u - width_px // 2
    y0, y1 = max(0, top), min(H, top + height_px)
    x0, x1 = max(0, left), min(W, left + width_px)
    if y0 >= y1 or x0 >= x1:
        return 0
    sy, sx = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
    rgb, soft, hard = rgb[sy, sx], soft[sy, sx], hard[sy, sx]
    if not hard.any():
        return 0
    region = out[y0:y1, x0:x1].astype(np.float32)
    # mild photometric matching: move the object's brightness half-way (in log) toward the local road's
    # brightness times a random factor in [0.7, 1.1]
    ry0, ry1 = max(0, v - height_px), min(H, v + height_px // 2 + 1)
    rx0, rx1 = max(0, u - width_px), min(W, u + width_px + 1)
    local = road[ry0:ry1, rx0:rx1]
    obj_l = float(_luma(rgb)[hard].mean())
    if local.any() and obj_l > 1.0:
        road_l = float(_luma(out[ry0:ry1, rx0:rx1].astype(np.float32))[local].mean())
        target = road_l * float(rng.uniform(0.7, 1.1))
        gain = float(np.clip(np.sqrt(max(target, 1.0) / obj_l), 0.6, 1.6))
        rgb = rgb * gain
    a = soft[..., None]
    out[y0:y1, x0:x1] = np.clip(a * rgb + (1.0 - a) * region + 0.5, 0, 255).astype(np.uint8)
    instances[y0:y1, x0:x1][hard] = new_id
    return int(hard.sum())


def paste_on_road(frame: np.ndarray, road: np.ndarray, cutouts: Sequence[Cutout], rng: np.random.Generator,
                  count: tuple[int, int] = (1, 3), width_m: tuple[float, float] = (0.3, 1.5),
                  horizon_row: float | None = None, road_width_m: float = 7.0,
                  camera_height_m: float | None = None, min_width_px: int = 12,
                  min_visible_px: int = 100, erode_fraction: float = 0.03,
                  max_tries: int = 20) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Pastes ``count`` (inclusive range, drawn from ``rng``) cutouts onto the road of ``frame``.

    Each object's bottom-centre lands on a pixel of :func:`interior_road` (row drawn uniformly among the
    candidate rows, then the column uniformly within the row); its pixel width is
    ``W * px_per_m(row)`` for a physical width ``W`` drawn uniformly from ``width_m`` (scale model:
    :func:`road_geometry` with ``road_width_m`` or ``camera_height_m``; ``horizon_row`` overrides the
    estimate); its height
    keeps the cutout's aspect ratio.  A placement under ``min_width_px`` (too far) is redrawn, at most
    ``max_tries`` times per object.  The object is flipped at random, its brightness mildly matched to
    the local road, its edge feathered by one pixel inwards.

    Returns ``(rgb, instances, meta)``: ``instances`` ``H x W`` int32, 0 background and ``1..k`` the
    objects (exactly the pixels whose paste alpha is >= 0.5; later pastes occlude earlier ones; an object
    left with fewer than ``min_visible_px`` visible pixels is dropped from the map and the metadata and
    the ids renumbered ``1..k`` in paste order; its few visible pixels stay in the RGB); ``meta`` one dict
    per instance: ``id, kind, name, bottom_row, bottom_col, width_px, height_px, width_m, area_px``
    (visible pixels) and ``on_road`` (True: the bottom-centre pixel is road).  Without usable road (or
    no cutouts) the frame comes back unchanged with no instance.
    """
    frame = np.asarray(frame)
    road = np.asarray(road, dtype=bool)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be H x W x 3 uint8, got {frame.shape} {frame.dtype}")
    if road.shape != frame.shape[:2]:
        raise ValueError(f"road mask {road.shape} does not match the frame {frame.shape[:2]}")
    H, W = road.shape
    out = frame.copy()
    instances = np.zeros((H, W), dtype=np.int32)
    geo = road_geometry(road, road_width_m, horizon_row, camera_height_m=camera_height_m) if cutouts else None
    if geo is None:
        return out, instances, []
    cand = interior_road(road, geo.horizon_row, erode_fraction)
    cand_rows = np.flatnonzero(cand.any(axis=1))
    if cand_rows.size == 0:
        return out, instances, []
    n = int(rng.integers(int(count[0]), int(count[1]) + 1))
    placed: list[dict[str, Any]] = []
    for _ in range(n):
        for _try in range(max_tries):
            v = int(cand_rows[rng.integers(cand_rows.size)])
            cols = np.flatnonzero(cand[v])
            u = int(cols[rng.integers(cols.size)])
            wm = float(rng.uniform(width_m[0], width_m[1]))
            cut = cutouts[int(rng.integers(len(cutouts)))]
            width_px = int(round(wm * float(geo.px_per_m(v))))
            if width_px < min_width_px:
                continue
            new_id = len(placed) + 1
            if _paste_one(out, instances, road, cut, v, u, width_px, new_id, rng) == 0:
                continue
            ch, cw = cut.mask.shape
            placed.append(dict(id=new_id, kind=cut.kind, name=cut.name, bottom_row=v, bottom_col=u,
                               width_px=width_px, height_px=max(1, int(round(ch * width_px / cw))),
                               width_m=round(wm, 3), on_road=bool(road[v, u])))
            break
    return (out,) + _drop_occluded(instances, placed, min_visible_px)


def _drop_occluded(instances: np.ndarray, placed: Sequence[dict[str, Any]],
                   min_visible_px: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Visibility bookkeeping: ``placed[i]`` describes id ``placed[i]["id"]`` (``1..n`` in paste order);
    ids left with fewer than ``min_visible_px`` pixels are removed, the rest renumbered ``1..k`` in the
    same order, and ``area_px`` set to their visible pixel count."""
    n = len(placed)
    areas = np.bincount(instances.ravel(), minlength=n + 1)
    remap = np.zeros(max(n + 1, int(instances.max(initial=0)) + 1), dtype=np.int32)
    meta: list[dict[str, Any]] = []
    for m in placed:
        if areas[m["id"]] >= min_visible_px:
            remap[m["id"]] = len(meta) + 1
            meta.append(dict(m, id=len(meta) + 1, area_px=int(areas[m["id"]])))
    return remap[instances], meta


# -- normal variants -------------------------------------------------------------------------------------

@dataclass
class _Aug:
    flip: bool
    crop: tuple[int, int, int, int] | None  # y0, x0, ch, cw
    contrast: float
    brightness: float
    gamma: float
    noise_sigma: float
    jpeg_quality: int | None


def _draw_aug(shape: tuple[int, int], rng: np.random.Generator) -> _Aug:
    h, w = shape
    crop = None
    if rng.random() < 0.5:
        s = float(rng.uniform(0.9, 1.0))
        ch, cw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        crop = (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw)
    return _Aug(flip=bool(rng.random() < 0.5), crop=crop, contrast=float(rng.uniform(0.85, 1.15)),
                brightness=float(rng.uniform(-15.0, 15.0)), gamma=float(rng.uniform(0.85, 1.15)),
                noise_sigma=float(rng.uniform(0.0, 4.0)) if rng.random() < 0.5 else 0.0,
                jpeg_quality=int(rng.integers(60, 96)) if rng.random() < 0.5 else None)


def _geometric(img: np.ndarray, aug: _Aug, nearest: bool = False) -> np.ndarray:
    h, w = img.shape[:2]
    if aug.flip:
        img = img[:, ::-1]
    if aug.crop is not None:
        y0, x0, ch, cw = aug.crop
        img = cv2.resize(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw]), (w, h),
                         interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


def _photometric(rgb: np.ndarray, aug: _Aug) -> np.ndarray:
    x = rgb.astype(np.float32)
    x = (x - 128.0) * aug.contrast + 128.0 + aug.brightness
    x = 255.0 * (np.clip(x, 0.0, 255.0) / 255.0) ** aug.gamma
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _sensor(rgb: np.ndarray, aug: _Aug, rng: np.random.Generator) -> np.ndarray:
    if aug.noise_sigma > 0:
        noise = rng.normal(0.0, aug.noise_sigma, rgb.shape).astype(np.float32)
        rgb = np.clip(rgb.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
    if aug.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, aug.jpeg_quality])
        if ok:
            rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(rgb)


def normal_variants(frame: np.ndarray, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` augmented copies of a normal frame that stay plausible camera frames: horizontal flip
    (p 0.5), scale-crop of 90-100 % of the frame resized back to its size (p 0.5), contrast x[0.85, 1.15],
    brightness +-15, gamma [0.85, 1.15], Gaussian noise sigma <= 4 (p 0.5), JPEG re-compression quality
    60-95 (p 0.5).  Each ``H x W x 3`` uint8, deterministic under ``rng``.

    They are NOT independent samples: variants of one scene share its content, so a false alarm on one
    usually repeats on the others.  Count false-alarm rates per scene as well as per frame, and split
    train / test by scene.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be H x W x 3 uint8, got {frame.shape} {frame.dtype}")
    out = []
    for _ in range(int(count)):
        aug = _draw_aug(frame.shape[:2], rng)
        out.append(_sensor(_photometric(_geometric(frame, aug), aug), aug, rng))
    return out


# -- real frames -----------------------------------------------------------------------------------------

def load_real_frames(assets: str | Path) -> list[RealFrame]:
    """The real frames of ``shared/assets``: ``real_driving_frames/*.jpg`` (camera ``"udacity"``) and
    ``cityscapes_val/frankfurt_*_leftImg8bit.png`` (camera ``"cityscapes"``, name without
    ``_leftImg8bit``), sorted by name.  Cityscapes frames are for local evaluation only (licence: never
    redistribute them).  Raises ``FileNotFoundError`` naming the folder when one is missing or empty."""
    from pebal_training.data.datasets import read_rgb

    assets = Path(assets)
    frames: list[RealFrame] = []
    for sub, pattern, camera in (("real_driving_frames", "*.jpg", "udacity"),
                                 ("cityscapes_val", "frankfurt_*_leftImg8bit.png", "cityscapes")):
        folder = assets / sub
        files = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{folder}: no {pattern} frames (expected the shared assets, see PROVENANCE.md)")
        for f in files:
            frames.append(RealFrame(f.stem.removesuffix("_leftImg8bit"), read_rgb(f), camera))
    return sorted(frames, key=lambda fr: fr.name)


def cityscapes_gt_road(assets: str | Path) -> np.ndarray | None:
    """The ground-truth trainIds (``128 x 256`` uint8, 0 = road, 255 = ignore) of Cityscapes frame
    ``frankfurt_000000_000294``, from mmsegmentation's downscaled test fixture
    ``cityscapes_val/mmseg_pseudo_256x128/``; ``None`` when absent.  Road mask at frame size:
    ``cv2.resize((ids == 0).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0``."""
    from pebal_training.data.datasets import read_label

    path = (Path(assets) / "cityscapes_val" / "mmseg_pseudo_256x128"
            / "frankfurt_000000_000294_gtFine_labelTrainIds.png")
    if not path.is_file():
        return None
    return read_label(path).astype(np.uint8)


# -- the benchmark ---------------------------------------------------------------------------------------

def _road_for(road_masks: Sequence[np.ndarray] | Mapping[str, np.ndarray], index: int, frame: RealFrame) -> np.ndarray:
    mask = road_masks[frame.name] if isinstance(road_masks, Mapping) else road_masks[index]
    mask = np.asarray(mask, dtype=bool)
    h, w = frame.rgb.shape[:2]
    if mask.shape != (h, w):
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def build_road_benchmark(frames: Sequence[RealFrame], road_masks: Sequence[np.ndarray] | Mapping[str, np.ndarray],
                         cutouts: Sequence[Cutout], seed: int, pastes_per_frame: int, variants_per_frame: int,
                         include_original: bool = True, **paste_options: Any) -> list[Sample]:
    """For each frame: ``variants_per_frame`` normal samples ``<name>_nXX`` (with ``include_original`` the
    first, ``n00``, is the frame itself, the rest :func:`normal_variants`) and ``pastes_per_frame`` pasted
    samples ``<name>_pXX``, each on its own augmented copy (flip / crop applied to the road mask too;
    noise and JPEG applied after the paste, so the objects get them as well).  ``road_masks``: one bool
    mask per frame (a sequence aligned with ``frames`` or a mapping by name), any resolution (resized
    nearest to the frame).  ``paste_options`` go to :func:`paste_on_road`.  A paste attempt that places
    nothing (no usable road) still yields its sample, with no instance (``normal`` False, ``meta``
    empty): callers should drop or count those.  Deterministic under ``seed`` and each frame's name
    (independent of the order of ``frames``)."""
    samples: list[Sample] = []
    for i, fr in enumerate(frames):
        road = _road_for(road_masks, i, fr)
        key = zlib.crc32(fr.name.encode())
        h, w = fr.rgb.shape[:2]
        zeros = np.zeros((h, w), dtype=np.int32)
        rng_n = np.random.default_rng((int(seed), key, 1))
        n_aug = variants_per_frame - 1 if include_original and variants_per_frame > 0 else variants_per_frame
        normals = ([fr.rgb.copy()] if include_original and variants_per_frame > 0 else [])
        normals += normal_variants(fr.rgb, rng_n, max(0, n_aug))
        for j, rgb in enumerate(normals):
            samples.append(Sample(f"{fr.name}_n{j:02d}", fr.name, rgb, zeros.copy(), [], True))
        for j in range(int(pastes_per_frame)):
            rng = np.random.default_rng((int(seed), key, 2, j))
            aug = _draw_aug((h, w), rng)
            base = _photometric(_geometric(fr.rgb, aug), aug)
            road_j = _geometric(road.astype(np.uint8), aug, nearest=True).astype(bool)
            rgb, inst, meta = paste_on_road(base, road_j, cutouts, rng, **paste_options)
            samples.append(Sample(f"{fr.name}_p{j:02d}", fr.name, _sensor(rgb, aug, rng), inst, meta, False))
    return samples
