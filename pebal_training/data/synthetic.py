"""Procedural synthetic street scenes with road anomalies (our own generator).

Every scene is rendered with a pinhole camera looking along a straight road over a flat ground plane, so
the geometry is metrically consistent: things on the ground shrink with distance, and the reported ground
position of each obstacle projects back onto the bottom of its bounding box.  The scenes serve the unit
tests, the demo (a "drive" that can be turned into a rosbag) and the training of a small embedded demo
model; they are not meant to replace real data.

Conventions
-----------
World frame (metres): ``X`` to the right, ``Y`` up, ``Z`` forward along the road.  The ground is the plane
``Y = 0``.  The camera sits at ``(0, height, ego_z)``: ``X = 0`` is the camera's lateral position (roughly
the centre of the ego lane) and ``ego_z`` is ``SceneConfig.ego_offset`` (plus the distance driven in a
drive).  The camera looks along ``+Z``, pitched down by ``pitch`` radians, with no roll and no yaw.

Camera frame (OpenCV): ``x`` right, ``y`` down, ``z`` along the optical axis; pixel ``(u, v)`` with integer
coordinates at pixel centres, ``u = fx * x / z + cx`` and ``v = fy * y / z + cy``.

*Ground positions* (``Obstacle.ground_position``) are ``(x, z)`` on the ground plane relative to the point
straight below the camera: ``x`` lateral (right positive) and ``z`` forward, horizontal, in metres.  They
are given for the obstacle's contact point nearest to the camera: its lateral centre, at the nearest
forward distance of its footprint.  ``Camera.ground_to_pixel`` / ``Camera.pixel_to_ground`` convert.

Labels are Cityscapes trainIds (0 road ... 18 bicycle, 255 void); see :data:`TRAIN_ID_NAMES`.  Label maps
are hard (never anti-aliased); the RGB image is slightly blurred and noisy.  Anomaly pixels carry, in the
semantic map, the trainId of the surface the anomaly rests on (road for every anomaly this generator
places), and ``1`` in the anomaly map (``0`` inlier, ``1`` anomaly, ``255`` void: the Fishyscapes
encoding).  Void (255 in both maps) marks the ego vehicle's bonnet when one is drawn.

Everything is deterministic under the seed (a scene depends on the seed and the config; a drive also on its
length, speed and frame rate).  Rendering is a painter's algorithm over projected polygons (``cv2.fillPoly``
into an item-id map, then colour / label look-up tables) plus a per-pixel ground plane; a 512 x 1024 scene
takes about 100 ms on one core (world construction ~40 %, rendering ~60 %), a frame of a drive ~60 ms (the
world is built once).  The first scene of a given size also builds cached noise tiles (~50 ms).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

__all__ = [
    "ANOMALY_KINDS",
    "CITYSCAPES_PALETTE",
    "TRAIN_ID_NAMES",
    "VOID",
    "Camera",
    "Obstacle",
    "Scene",
    "SceneConfig",
    "colorize_labels",
    "generate_drive",
    "generate_scene",
]

# --------------------------------------------------------------------------------------------------------
# Label space
# --------------------------------------------------------------------------------------------------------
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)
VOID = 255

TRAIN_ID_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

#: The standard Cityscapes colours of the 19 trainIds (for visualisation only; scenes use photo colours).
CITYSCAPES_PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
     [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
     [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]],
    dtype=np.uint8)

#: Kinds of out-of-distribution objects placed on the road.
ANOMALY_KINDS: tuple[str, ...] = ("box", "crate", "tyre", "animal", "debris", "rock")


def colorize_labels(semantic: np.ndarray, void_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Map an ``H x W`` trainId image to an ``H x W x 3`` RGB image with :data:`CITYSCAPES_PALETTE`."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = np.asarray(void_color, np.uint8)
    lut[:19] = CITYSCAPES_PALETTE
    return lut[np.asarray(semantic, np.uint8)]


# --------------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------------
@dataclass
class SceneConfig:
    """Parameters of the procedural scene distribution.  ``(a, b)`` pairs are ranges sampled uniformly
    (integers inclusive); probabilities are per scene unless noted."""

    #: Image size in pixels.
    height: int = 512
    width: int = 1024
    #: Horizontal field of view; ``fx = fy = (width / 2) / tan(hfov / 2)`` (square pixels).
    hfov_deg: float = 60.0
    #: Camera mounting height above the road, metres.
    camera_height: float = 1.5
    #: Row of the horizon as a fraction of the image height, sampled per scene; the camera pitch is
    #: derived from it (``pitch = atan((cy - horizon_row) / fy)``, positive = looking down).
    horizon_range: tuple[float, float] = (0.36, 0.46)
    #: Fixed pitch in degrees (positive = down); overrides ``horizon_range`` when set.
    pitch_deg: float | None = None
    #: Number of driving lanes and their width (metres).
    lane_count_range: tuple[int, int] = (2, 4)
    lane_width_range: tuple[float, float] = (3.0, 3.75)
    #: Probability that the road is two-way (the ego drives on the right half, oncoming traffic left).
    two_way_prob: float = 0.7
    #: Probability, per side, of a parking strip (2.2 m of road along the kerb, with parked cars).
    parking_prob: float = 0.5
    #: Sidewalk width per side, metres.
    sidewalk_width_range: tuple[float, float] = (1.5, 4.5)
    #: Probability, per side, of a terrain (grass / dirt) strip behind the sidewalk, and its width.
    terrain_prob: float = 0.5
    terrain_width_range: tuple[float, float] = (0.5, 3.0)
    #: Mean spacing (metres) of cross streets (intersections with zebra crossings); 0 disables them.
    cross_street_spacing: float = 160.0
    #: Fraction of the frontage occupied by buildings (the rest: walls, fences, hedges, trees).
    building_prob: float = 0.75
    #: Probability that a non-building frontage segment is a wall / a fence (else a hedge).
    wall_prob: float = 0.35
    fence_prob: float = 0.35
    #: Number of vehicles in the driving lanes (never in the ego lane within 12 m ahead of the camera).
    car_count_range: tuple[int, int] = (2, 9)
    #: Parked cars per metre of parking strip.
    parked_car_density: tuple[float, float] = (0.04, 0.12)
    #: Per-vehicle probabilities of a truck / a bus instead of a car.
    truck_prob: float = 0.07
    bus_prob: float = 0.05
    #: Number of pedestrians (mostly on sidewalks, some crossing the road at intersections).
    person_count_range: tuple[int, int] = (0, 8)
    #: Probability of a cyclist (rider + bicycle) in the scene.
    rider_prob: float = 0.3
    #: Spacing of street lamps per side (metres); each lamp may carry a traffic sign.
    pole_spacing_range: tuple[float, float] = (20.0, 45.0)
    #: Probability that a lamp post carries a traffic sign (separate sign posts are also added).
    sign_prob: float = 0.35
    #: Probability, per side, of a row of street trees, and their spacing.
    tree_prob: float = 0.6
    tree_spacing_range: tuple[float, float] = (7.0, 15.0)
    #: Number of anomalies (OOD objects on the road), their kinds and their largest dimension (metres).
    anomaly_count_range: tuple[int, int] = (0, 3)
    anomaly_kinds: tuple[str, ...] = ANOMALY_KINDS
    anomaly_size_range: tuple[float, float] = (0.25, 1.4)
    #: Forward distance range (metres, from the camera at the first frame) where anomalies are placed.
    anomaly_distance_range: tuple[float, float] = (7.0, 45.0)
    #: Probability that an anomaly lies in the ego lane (else in another lane).
    anomaly_ego_lane_prob: float = 0.55
    #: Position of the camera along the road (world ``Z``, metres); a drive starts here.
    ego_offset: float = 0.0
    #: How far ahead (metres) scene content is generated; a distant skyline closes the view.
    view_distance: float = 220.0
    #: Probability that the ego vehicle's bonnet is visible at the bottom (labelled void).
    ego_hood_prob: float = 0.3
    #: Probability of an overcast sky (soft light, no cast shadows).
    overcast_prob: float = 0.25
    #: Standard deviation of the additive sensor noise (in 8-bit units) and of the optical blur (pixels).
    noise_sigma: float = 2.5
    blur_sigma: float = 0.7

    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent settings."""
        if self.height < 16 or self.width < 16:
            raise ValueError(f"image size too small: {self.width}x{self.height}")
        if not 1.0 < self.hfov_deg < 170.0:
            raise ValueError("hfov_deg must be in (1, 170)")
        if self.camera_height <= 0.2:
            raise ValueError("camera_height must be > 0.2 m")
        for name in ("horizon_range", "lane_count_range", "lane_width_range", "sidewalk_width_range",
                     "terrain_width_range", "car_count_range", "parked_car_density", "person_count_range",
                     "pole_spacing_range", "tree_spacing_range", "anomaly_count_range", "anomaly_size_range",
                     "anomaly_distance_range"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name} must be a non-negative (low, high) range, got {(lo, hi)}")
        if not 0.0 < self.horizon_range[0] <= self.horizon_range[1] < 1.0:
            raise ValueError("horizon_range must lie inside (0, 1)")
        if self.lane_count_range[0] < 1:
            raise ValueError("at least one lane is needed")
        if self.anomaly_count_range[1] > 0:
            if not self.anomaly_kinds:
                raise ValueError("anomaly_kinds is empty")
            unknown = set(self.anomaly_kinds) - set(ANOMALY_KINDS)
            if unknown:
                raise ValueError(f"unknown anomaly kinds: {sorted(unknown)}")
            if self.anomaly_size_range[0] <= 0.0:
                raise ValueError("anomaly sizes must be positive")
            if self.anomaly_distance_range[0] < 1.0:
                raise ValueError("anomalies must be at least 1 m ahead")
        if self.pole_spacing_range[0] < 1.0 or self.tree_spacing_range[0] < 1.0:
            raise ValueError("spacings must be >= 1 m")
        if self.view_distance < 20.0:
            raise ValueError("view_distance must be >= 20 m")


@dataclass
class Camera:
    """Pinhole camera over a flat ground plane (see the module docstring for the frames)."""

    fx: float
    fy: float
    cx: float
    cy: float
    #: Mounting height above the ground, metres.
    height: float
    #: Pitch in radians, positive = looking down.
    pitch: float
    image_width: int
    image_height: int

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - conventional name
        """3 x 3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def horizon_row(self) -> float:
        """Image row of the horizon (vanishing line of the ground plane)."""
        return self.cy - self.fy * math.tan(self.pitch)

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """``(..., 3)`` points relative to the point under the camera (``X`` right, ``Y`` up, ``Z``
        forward) to camera coordinates ``(x right, y down, z optical axis)``."""
        p = np.asarray(points, np.float64)
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        rx, ry, rz = p[..., 0], p[..., 1] - self.height, p[..., 2]
        return np.stack([rx, -ry * c - rz * s, -ry * s + rz * c], axis=-1)

    def ground_to_pixel(self, x: float | np.ndarray, z: float | np.ndarray) -> tuple[Any, Any]:
        """Project ground point(s) ``(x lateral, z forward)`` to pixel coordinates ``(u, v)``."""
        x = np.asarray(x, np.float64)
        z = np.asarray(z, np.float64)
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        zc = self.height * s + z * c
        yc = self.height * c - z * s
        u = self.fx * x / zc + self.cx
        v = self.fy * yc / zc + self.cy
        return (u[()], v[()])

    def pixel_to_ground(self, u: float | np.ndarray, v: float | np.ndarray) -> tuple[Any, Any]:
        """Intersect the ray through pixel(s) ``(u, v)`` with the ground; returns ``(x, z)`` metres
        (``nan`` at or above the horizon)."""
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        dx = (u - self.cx) / self.fx
        dy = (v - self.cy) / self.fy
        denom = dy * c + s
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(denom > 1e-9, self.height / denom, np.nan)
        return ((t * dx)[()], (t * (c - dy * s))[()])

    def to_dict(self) -> dict[str, float]:
        return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in asdict(self).items()}


@dataclass
class Obstacle:
    """One anomaly visible in a scene."""

    #: Identifier, stable across the frames of a drive.
    id: int
    #: One of :data:`ANOMALY_KINDS`.
    kind: str
    #: Tight box around the visible anomaly pixels: ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive.
    bbox: tuple[int, int, int, int]
    #: Visible pixels (anomaly value 1).
    area: int
    #: Pixels the object would cover inside the image without occluders (cars, people, the bonnet).
    full_area: int
    #: ``(x, z)`` of the nearest contact point, camera ground frame, metres (see module docstring).
    ground_position: tuple[float, float]
    #: ``(X, Z)`` of the same point in the world frame (``Z`` along the road; fixed during a drive).
    world_position: tuple[float, float]
    #: Extent ``(width, height, length)`` in metres (lateral, vertical, along the road).
    size: tuple[float, float, float]
    #: Whether the object's projection is cut by the image border.
    truncated: bool

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area if self.full_area else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"] = [int(b) for b in self.bbox]
        d["ground_position"] = [round(float(v), 4) for v in self.ground_position]
        d["world_position"] = [round(float(v), 4) for v in self.world_position]
        d["size"] = [round(float(v), 4) for v in self.size]
        d["visible_fraction"] = round(self.visible_fraction, 4)
        return d


@dataclass
class Scene:
    """One rendered frame."""

    #: ``H x W x 3`` uint8 RGB.
    image: np.ndarray
    #: ``H x W`` uint8 trainIds; anomaly pixels carry the label of the surface they rest on (road).
    semantic: np.ndarray
    #: ``H x W`` uint8: 0 inlier, 1 anomaly, 255 void.
    anomaly: np.ndarray
    #: Visible anomalies (area > 0), nearest first.
    obstacles: list[Obstacle]
    camera: Camera
    #: World ``Z`` of the camera (metres along the road).
    ego_z: float = 0.0
    #: Seconds since the start of the drive (0 for single scenes).
    timestamp: float = 0.0
    frame_index: int = 0

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description (camera, obstacles, timing)."""
        return {
            "camera": self.camera.to_dict(),
            "ego_z": round(float(self.ego_z), 4),
            "timestamp": round(float(self.timestamp), 6),
            "frame_index": int(self.frame_index),
            "obstacles": [o.to_dict() for o in self.obstacles],
        }


# --------------------------------------------------------------------------------------------------------
# Materials, colours and noise
# --------------------------------------------------------------------------------------------------------
# material -> (fine noise amplitude, mid-frequency noise amplitude), multiplicative
_MAT_FLAT, _MAT_BUILDING, _MAT_VEG, _MAT_CAR, _MAT_GLASS, _MAT_CLOTH, _MAT_ANOM, _MAT_ROUGH, _MAT_LIGHT = \
    range(9)
_MAT_AMPS = np.array([[0.03, 0.03], [0.035, 0.035], [0.17, 0.24], [0.02, 0.03], [0.03, 0.06],
                      [0.05, 0.05], [0.07, 0.09], [0.12, 0.14], [0.0, 0.0]], np.float32)

_CAR_COLOURS = np.array([[225, 225, 225], [235, 235, 230], [170, 172, 175], [120, 122, 125], [35, 35, 38],
                         [28, 30, 45], [40, 60, 120], [150, 28, 26], [70, 20, 24], [45, 75, 55],
                         [190, 180, 150], [95, 90, 80], [210, 170, 40]], np.float64)
_CAR_COLOUR_P = np.array([12, 8, 14, 10, 14, 6, 6, 6, 3, 3, 3, 4, 1], np.float64)
_BUILDING_COLOURS = np.array([[200, 190, 170], [215, 205, 185], [175, 165, 150], [150, 90, 70],
                              [170, 110, 85], [140, 140, 140], [185, 185, 180], [205, 195, 150],
                              [160, 175, 185], [200, 170, 150], [120, 110, 100], [225, 220, 210]], np.float64)
_ANOMALY_VIVID = np.array([[235, 120, 25], [210, 40, 150], [35, 190, 205], [235, 215, 35], [125, 55, 175],
                           [140, 215, 40], [30, 85, 225], [240, 240, 240], [215, 30, 35], [245, 150, 190],
                           [255, 90, 60], [20, 160, 110]], np.float64)
_ANIMAL_COLOURS = np.array([[120, 80, 45], [165, 120, 70], [60, 45, 35], [215, 205, 190], [150, 150, 145],
                            [190, 140, 80], [35, 30, 28]], np.float64)

_NOISE_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_GROUND_TILE = 256


def _noise_tiles(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed (seed-independent) noise tiles, cached per image size: per-channel sensor noise (h+64, w+64,
    3), fine luminance noise (h+64, w+64) and blurred mid-frequency noise, all ~unit variance."""
    key = (h, w)
    tiles = _NOISE_CACHE.get(key)
    if tiles is None:
        g = np.random.default_rng(0x5EB41)
        sensor = g.standard_normal((h + 64, w + 64, 3), dtype=np.float32)
        fine = cv2.GaussianBlur(g.standard_normal((h + 64, w + 64), dtype=np.float32), (0, 0), 0.8)
        fine /= fine.std() + 1e-6
        mid = cv2.GaussianBlur(g.standard_normal((h + 64, w + 64), dtype=np.float32), (0, 0), 3.0)
        mid /= mid.std() + 1e-6
        tiles = (sensor, fine, mid)
        if len(_NOISE_CACHE) > 8:
            _NOISE_CACHE.clear()
        _NOISE_CACHE[key] = tiles
    return tiles


def _blur_wrap(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a periodic tile (seamless when tiled)."""
    p = int(math.ceil(3 * sigma)) + 1
    big = np.pad(a, p, mode="wrap")
    return cv2.GaussianBlur(big, (0, 0), sigma)[p:-p, p:-p]


def _make_ground_tiles() -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(0x6209D)
    n = _GROUND_TILE
    fine = g.standard_normal((n, n), dtype=np.float32)
    fine = 0.6 * fine + 0.8 * _blur_wrap(fine, 1.0)
    fine /= fine.std()
    coarse = _blur_wrap(g.standard_normal((n, n), dtype=np.float32), 6.0)
    coarse /= coarse.std()
    return fine.astype(np.float32), coarse.astype(np.float32)


_GROUND_FINE, _GROUND_COARSE = _make_ground_tiles()


def _u(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _ri(rng: np.random.Generator, lo_hi: Sequence[int]) -> int:
    return int(rng.integers(int(lo_hi[0]), int(lo_hi[1]) + 1))


def _jit(rng: np.random.Generator, rgb: Sequence[float], amount: float = 10.0) -> np.ndarray:
    """A colour jittered by roughly ``amount`` (uniform noise of the same standard deviation)."""
    j = (rng.random(3) - 0.5) * (amount * 3.4641)
    j += rgb
    return j


# --------------------------------------------------------------------------------------------------------
# Geometry helpers (all return float64 arrays of world points)
# --------------------------------------------------------------------------------------------------------
def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.cos(a), np.sin(a)


_C16 = _circle(16)
_C24 = _circle(24)
_C12 = _circle(12)


def _ellipse_z(z: float, cx: float, cy: float, rx: float, ry: float, n: int = 16) -> np.ndarray:
    """Ellipse in the vertical plane ``Z = z`` (a billboard facing the camera)."""
    c, s = _C24 if n == 24 else (_C12 if n == 12 else _C16)
    out = np.empty((len(c), 3))
    out[:, 0] = c
    out[:, 0] *= rx
    out[:, 0] += cx
    out[:, 1] = s
    out[:, 1] *= ry
    out[:, 1] += cy
    np.maximum(out[:, 1], 0.0, out=out[:, 1])
    out[:, 2] = z
    return out


def _poly_z(z: float, xy: Sequence[Sequence[float]]) -> np.ndarray:
    a = np.asarray(xy, np.float64)
    out = np.empty((len(a), 3))
    out[:, :2] = a
    out[:, 2] = z
    return out


def _rect_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)


def _rect_x(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], np.float64)


def _ellipse_x(x: float, cz: float, cy: float, rz: float, ry: float, n: int = 16) -> np.ndarray:
    """Ellipse in the vertical plane ``X = x`` (e.g. a wheel on a car side)."""
    c, s = _C16 if n == 16 else _C12
    out = np.empty((len(c), 3))
    out[:, 0] = x
    out[:, 1] = s
    out[:, 1] *= ry
    out[:, 1] += cy
    np.maximum(out[:, 1], 0.0, out=out[:, 1])
    out[:, 2] = c
    out[:, 2] *= rz
    out[:, 2] += cz
    return out


def _prism(footprint_xz: np.ndarray, y0: float, y1: float, top_scale: float = 1.0,
           top_shift: tuple[float, float] = (0.0, 0.0)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces (without the bottom) of a convex prism / frustum over a convex footprint: ``[(verts, normal)]``
    with outward normals; the top face comes last."""
    fp = np.asarray(footprint_xz, np.float64)
    n = len(fp)
    centre = fp.mean(axis=0)
    top = centre + (fp - centre) * top_scale + np.asarray(top_shift)
    bottom3 = np.column_stack([fp[:, 0], np.full(n, y0), fp[:, 1]])
    top3 = np.column_stack([top[:, 0], np.full(n, y1), top[:, 1]])
    j = np.roll(np.arange(n), -1)
    quads = np.stack([bottom3, bottom3[j], top3[j], top3], axis=1)  # (n, 4, 3)
    e1 = quads[:, 1] - quads[:, 0]
    e2 = quads[:, 3] - quads[:, 0]
    nrm = np.column_stack([e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1], e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
                           e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]])
    ln = np.sqrt((nrm ** 2).sum(axis=1))
    ok = ln > 1e-12
    nrm[ok] /= ln[ok, None]
    solid_c = np.array([centre[0], 0.5 * (y0 + y1), centre[1]])
    flip = ((quads.mean(axis=1) - solid_c) * nrm).sum(axis=1) < 0
    nrm[flip] *= -1.0
    faces = [(quads[i], nrm[i]) for i in range(n) if ok[i]]
    faces.append((top3, np.array([0.0, 1.0, 0.0])))
    return faces


_BOX_NORMALS = (np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]),
                np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 5 faces (no bottom) of an axis-aligned box, with outward normals (same layout as :func:`_prism`)."""
    v = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                  [x1, y0, z0], [x1, y0, z1], [x1, y1, z1], [x1, y1, z0],
                  [x1, y0, z1], [x0, y0, z1], [x0, y1, z1], [x1, y1, z1],
                  [x0, y0, z1], [x0, y0, z0], [x0, y1, z0], [x0, y1, z1],
                  [x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]], np.float64).reshape(5, 4, 3)
    return [(v[i], _BOX_NORMALS[i]) for i in range(5)]


def _shrink(poly: np.ndarray, f: float) -> np.ndarray:
    """Scale a polygon about its vertex centroid."""
    c = poly.sum(axis=0) / len(poly)
    return c + (poly - c) * f


def _convex_hull_xz(pts: np.ndarray) -> np.ndarray:
    hull = cv2.convexHull(np.asarray(pts, np.float32).reshape(-1, 1, 2))
    return hull.reshape(-1, 2).astype(np.float64)


def _rot_rect(cx: float, cz: float, w: float, length: float, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    loc = np.array([[-w / 2, -length / 2], [w / 2, -length / 2], [w / 2, length / 2], [-w / 2, length / 2]])
    return np.column_stack([cx + loc[:, 0] * c - loc[:, 1] * s, cz + loc[:, 0] * s + loc[:, 1] * c])


# --------------------------------------------------------------------------------------------------------
# Polygon soup with painter's-algorithm rendering
# --------------------------------------------------------------------------------------------------------
class _Obj:
    __slots__ = ("layer", "x0", "x1", "z0", "z1", "item_start", "item_end", "anomaly", "zmin", "zmax")

    def __init__(self, layer: int, x0: float, x1: float, z0: float, z1: float, anomaly: int):
        self.layer = layer
        self.x0, self.x1, self.z0, self.z1 = x0, x1, z0, z1
        self.anomaly = anomaly
        self.item_start = self.item_end = 0
        self.zmin, self.zmax = math.inf, -math.inf


@dataclass
class _AnomalyInfo:
    kind: str
    x_center: float
    z_near: float
    size: tuple[float, float, float]
    pattern: str
    c1: np.ndarray
    c2: np.ndarray
    period: float
    angle: float
    spots: np.ndarray  # (n, 3): x, y offsets (metres, relative to the reference point) and radius
    ref_y: float


class _Mesh:
    """Accumulates contours grouped into items (one colour/label each) grouped into objects."""

    _NAN3 = (math.nan, math.nan, math.nan)

    def __init__(self) -> None:
        self.contours: list[np.ndarray] = []
        self.item_c0: list[int] = []
        self.normals: list[Sequence[float]] = []
        self.colours: list[Any] = []
        self.shades: list[float] = []
        self.labels: list[int] = []
        self.mats: list[int] = []
        self.patterned: list[bool] = []
        self.item_obj: list[int] = []
        self.objects: list[_Obj] = []

    def begin(self, layer: int, x0: float, x1: float, z0: float, z1: float, anomaly: int = 0) -> None:
        o = _Obj(layer, min(x0, x1), max(x0, x1), min(z0, z1), max(z0, z1), anomaly)
        o.item_start = o.item_end = len(self.labels)
        self.objects.append(o)

    def add(self, contours: np.ndarray | list[np.ndarray], colour: Any, label: int,
            normal: Sequence[float] | None, shade: float, mat: int = _MAT_FLAT, patterned: bool = False) -> None:
        self.item_c0.append(len(self.contours))
        if isinstance(contours, np.ndarray) and contours.ndim == 2:
            self.contours.append(contours)
        else:
            self.contours.extend(contours)
        self.normals.append(self._NAN3 if normal is None else normal)
        self.colours.append(colour)
        self.shades.append(shade)
        self.labels.append(label)
        self.mats.append(mat)
        self.patterned.append(patterned)
        self.item_obj.append(len(self.objects) - 1)
        self.objects[-1].item_end = len(self.labels)

    def freeze(self) -> None:
        n_items = len(self.labels)
        lens = np.fromiter((len(c) for c in self.contours), np.int64, len(self.contours))
        self.V = np.concatenate(self.contours).astype(np.float64) if self.contours else np.zeros((0, 3))
        self.cstart = (np.cumsum(lens) - lens).astype(np.int64)
        self.cend = self.cstart + lens
        c0 = np.array(self.item_c0 + [len(self.contours)], np.int64)
        self.ic = np.column_stack([c0[:-1], c0[1:]]) if n_items else np.zeros((0, 2), np.int64)
        self.N = np.array(self.normals, np.float64).reshape(-1, 3)
        self.P0 = self.V[self.cstart[c0[:-1]]] if n_items else np.zeros((0, 3))
        self.S = np.array(self.shades, np.float32)
        self.C = np.clip(np.array([np.asarray(c, np.float64) for c in self.colours], np.float64).reshape(-1, 3)
                         * self.S[:, None], 0, 255).astype(np.float32)
        self.L = np.array(self.labels, np.uint8)
        self.M = np.array(self.mats, np.int64)
        self.PAT = np.array(self.patterned, bool)
        self.IO = np.array(self.item_obj, np.int64)
        self.cstart_l, self.cend_l = self.cstart.tolist(), self.cend.tolist()
        self.ic_l = [tuple(r) for r in self.ic.tolist()]
        # z extent of every object (for culling)
        if len(self.V):
            zmin_c = np.minimum.reduceat(self.V[:, 2], self.cstart)
            zmax_c = np.maximum.reduceat(self.V[:, 2], self.cstart)
            for o in self.objects:
                if o.item_end > o.item_start:
                    a, b = c0[o.item_start], c0[o.item_end]
                    o.zmin, o.zmax = float(zmin_c[a:b].min()), float(zmax_c[a:b].max())
        del self.contours, self.colours, self.normals


class _Projected:
    """Per-frame projection of a frozen mesh: yields OpenCV fixed-point polygons per item."""

    SHIFT = 4

    def __init__(self, mesh: _Mesh, cam: Camera, ego_z: float, near: float = 0.25):
        self.mesh = mesh
        w, h = cam.image_width, cam.image_height
        self.cam = cam
        V = mesh.V
        c, s = math.cos(cam.pitch), math.sin(cam.pitch)
        rx = V[:, 0]
        ry = V[:, 1] - cam.height
        rz = V[:, 2] - ego_z
        xc = rx
        yc = -ry * c - rz * s
        zc = -ry * s + rz * c
        self.cc = np.column_stack([xc, yc, zc])
        zs = np.maximum(zc, near)
        u = cam.fx * xc / zs + cam.cx
        v = cam.fy * yc / zs + cam.cy
        # OpenCV fills polygons with far-away vertices correctly; only keep coordinates bounded
        big = 16.0 * max(w, h)
        front = zc >= near
        inside = front & (np.abs(u - cam.cx) < big) & (np.abs(v - cam.cy) < big)
        if len(V):
            self.all_in = np.logical_and.reduceat(inside, mesh.cstart).tolist()
            self.any_front = np.logical_or.reduceat(front, mesh.cstart).tolist()
        else:
            self.all_in = self.any_front = []
        scale = float(1 << self.SHIFT)
        self.fp = np.round(np.column_stack([np.clip(u, -big, big), np.clip(v, -big, big)]) * scale
                           ).astype(np.int32)
        self.near = near
        self.planes = [
            (np.array([0.0, 0.0, 1.0]), near),
            (np.array([cam.fx, 0.0, big * 0.9]), 0.0),
            (np.array([-cam.fx, 0.0, big * 0.9]), 0.0),
            (np.array([0.0, cam.fy, big * 0.9]), 0.0),
            (np.array([0.0, -cam.fy, big * 0.9]), 0.0),
        ]
        cam_pos = np.array([0.0, cam.height, ego_z])
        if len(mesh.N):
            d = np.einsum("ij,ij->i", mesh.N, cam_pos - mesh.P0)
            self.facing = (np.isnan(mesh.N[:, 0]) | (d > 1e-9)).tolist()
        else:
            self.facing = []

    def _clip(self, ci: int) -> np.ndarray | None:
        mesh = self.mesh
        P = self.cc[mesh.cstart[ci]:mesh.cend[ci]]
        for nrm, d in self.planes:
            if len(P) < 3:
                return None
            dist = P @ nrm - d
            inside = dist >= 0
            if inside.all():
                continue
            out = []
            m = len(P)
            for i in range(m):
                j = (i + 1) % m
                if inside[i]:
                    out.append(P[i])
                if inside[i] != inside[j]:
                    t = dist[i] / (dist[i] - dist[j])
                    out.append(P[i] + t * (P[j] - P[i]))
            P = np.array(out) if out else np.zeros((0, 3))
        if len(P) < 3:
            return None
        cam = self.cam
        u = cam.fx * P[:, 0] / P[:, 2] + cam.cx
        v = cam.fy * P[:, 1] / P[:, 2] + cam.cy
        return np.round(np.column_stack([u, v]) * float(1 << self.SHIFT)).astype(np.int32)

    def polys(self, item: int) -> list[np.ndarray]:
        if not self.facing[item]:
            return []
        mesh = self.mesh
        a, b = mesh.ic_l[item]
        all_in, fp, cs, ce = self.all_in, self.fp, mesh.cstart_l, mesh.cend_l
        out = []
        for ci in range(a, b):
            if all_in[ci]:
                out.append(fp[cs[ci]:ce[ci]])
            elif self.any_front[ci]:
                p = self._clip(ci)
                if p is not None:
                    out.append(p)
        return out


# --------------------------------------------------------------------------------------------------------
# World construction
# --------------------------------------------------------------------------------------------------------
_BAND_WHITE, _BAND_YELLOW, _BAND_TRACK, _BAND_JOINT = 9, 10, 11, 12
_LAYER_SKYLINE, _LAYER_BUILDING, _LAYER_BACK, _LAYER_FRONTAGE, _LAYER_STREET = range(5)


class _World:
    """All static content of a scene / drive, in world coordinates."""

    def __init__(self, cfg: SceneConfig, rng: np.random.Generator, z_first: float, z_last: float):
        self.cfg = cfg
        self.rng = rng
        self.z_first, self.z_last = z_first, z_last
        self.z_lo = z_first - 25.0  # long objects (buildings) start here
        self.z_small = z_first - 5.0  # small objects (poles, trees, cars) start here
        self.z_hi = z_last + cfg.view_distance
        self.mesh = _Mesh()
        self.shadows = _Mesh()
        self.anomalies: list[_AnomalyInfo] = []
        self.occupied: list[tuple[float, float, float, float]] = []  # (x0, x1, z0, z1) on the road

        w, h = cfg.width, cfg.height
        f = (w / 2.0) / math.tan(math.radians(cfg.hfov_deg) / 2.0)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        if cfg.pitch_deg is not None:
            pitch = math.radians(cfg.pitch_deg)
        else:
            pitch = math.atan((cy - _u(rng, cfg.horizon_range) * h) / f)
        self.camera = Camera(fx=f, fy=f, cx=cx, cy=cy, height=float(cfg.camera_height), pitch=pitch,
                             image_width=w, image_height=h)
        self._lighting()
        self._layout()
        self._ground_model()
        self._skyline()
        self._anomalies()
        for side in (-1, 1):
            self._frontage(side)
            self._street_furniture(side)
            self._parked_cars(side)
        self._traffic()
        self._people()
        self._hood()
        self.noise_seed = int(rng.integers(0, 2 ** 62))
        self.mesh.freeze()
        self.shadows.freeze()

    # ---- lighting ---------------------------------------------------------------------------------------
    def _lighting(self) -> None:
        rng = self.rng
        self.overcast = bool(rng.random() < self.cfg.overcast_prob)
        az = rng.uniform(0, 2 * math.pi)
        el = math.radians(rng.uniform(22, 62))
        self.sun = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        self.ambient = rng.uniform(0.78, 0.9) if self.overcast else rng.uniform(0.5, 0.66)
        self.shadow_strength = 0.12 if self.overcast else rng.uniform(0.35, 0.55)
        if self.overcast:
            g = rng.uniform(170, 205)
            self.sky_zenith = np.array([g - 12, g - 6, g + 4])
            self.sky_horizon = np.array([g + 15, g + 17, g + 20])
            self.cloud_cover = 0.0
        else:
            self.sky_zenith = _jit(rng, [70, 125, 200], 12)
            self.sky_horizon = _jit(rng, [185, 208, 232], 8)
            self.cloud_cover = rng.uniform(0.0, 0.9)
        self.cloud_field = rng.standard_normal((12, 24)).astype(np.float32)
        self.haze_colour = self.sky_horizon * 0.9 + 20
        self.haze_dist = rng.uniform(250, 420) if self.overcast else rng.uniform(400, 900)
        self._sun = tuple(float(v) for v in self.sun)
        self._shade_flat = float(self.ambient + (1 - self.ambient) * 0.55)
        self.gain = rng.uniform(0.88, 1.08) * np.array([rng.uniform(0.95, 1.05), 1.0, rng.uniform(0.93, 1.06)])

    def shade(self, normal: Sequence[float] | None) -> float:
        if normal is None:
            return self._shade_flat
        nx, ny, nz = float(normal[0]), float(normal[1]), float(normal[2])
        d = max(0.0, nx * self._sun[0] + ny * self._sun[1] + nz * self._sun[2])
        return min(1.15, self.ambient + (1 - self.ambient) * d + 0.05 * ny)

    def add(self, contours, colour, label, normal=None, mat=_MAT_FLAT, patterned=False) -> None:
        self.mesh.add(contours, colour, label, normal, self.shade(normal), mat, patterned)

    def add_faces(self, faces, colour, label, mat=_MAT_FLAT, patterned=False, skip_top=False) -> None:
        for verts, nrm in faces:
            if skip_top and nrm[1] > 0.99:
                continue
            self.add(verts, colour, label, nrm, mat, patterned)

    def cast_shadow(self, footprint_xz: np.ndarray, height: float, strength: float | None = None) -> None:
        """Ground shadow of a prism with this footprint and height (and a contact shadow)."""
        fp = np.asarray(footprint_xz, np.float64)
        if self.overcast or fp[:, 1].min() > self.z_last + 90.0:  # soft light / too far to matter
            return
        s = self.sun
        off = -np.array([s[0], s[2]]) / max(s[1], 0.25) * height
        hull = _convex_hull_xz(np.vstack([fp, fp + off]))
        st = self.shadow_strength if strength is None else strength
        self.shadows.begin(0, float(hull[:, 0].min()), float(hull[:, 0].max()), float(hull[:, 1].min()),
                           float(hull[:, 1].max()))
        pts = np.column_stack([hull[:, 0], np.full(len(hull), 0.0), hull[:, 1]])
        self.shadows.add(pts, np.array([st, st, st]), 0, None, 1.0)

    def contact_shadow(self, footprint_xz: np.ndarray, strength: float = 0.55) -> None:
        if footprint_xz[:, 1].min() > self.z_last + 120.0:
            return
        fp = _shrink(np.asarray(footprint_xz, np.float64), 1.06)
        self.shadows.begin(1, float(fp[:, 0].min()), float(fp[:, 0].max()), float(fp[:, 1].min()),
                           float(fp[:, 1].max()))
        self.shadows.add(np.column_stack([fp[:, 0], np.zeros(len(fp)), fp[:, 1]]),
                         np.array([strength] * 3), 0, None, 1.0)

    # ---- road layout ------------------------------------------------------------------------------------
    def _layout(self) -> None:
        cfg, rng = self.cfg, self.rng
        n = _ri(rng, cfg.lane_count_range)
        lw = _u(rng, cfg.lane_width_range)
        two_way = n >= 2 and rng.random() < cfg.two_way_prob
        n_oncoming = n // 2 if two_way else 0
        ego_lane = int(rng.integers(n_oncoming, n))
        jitter = rng.uniform(-0.25, 0.25)
        self.n_lanes, self.lane_w, self.two_way, self.n_oncoming = n, lw, two_way, n_oncoming
        self.ego_lane = ego_lane
        self.lanes_x0 = -(ego_lane + 0.5) * lw - jitter
        self.lanes_x1 = self.lanes_x0 + n * lw
        park_l = 2.2 if rng.random() < cfg.parking_prob else 0.0
        park_r = 2.2 if rng.random() < cfg.parking_prob else 0.0
        self.park = {-1: park_l, 1: park_r}
        self.road_x0 = self.lanes_x0 - park_l
        self.road_x1 = self.lanes_x1 + park_r
        self.kerb_w = rng.uniform(0.2, 0.3)
        self.sidewalk_w = {s: _u(rng, cfg.sidewalk_width_range) for s in (-1, 1)}
        self.terrain_w = {s: (_u(rng, cfg.terrain_width_range) if rng.random() < cfg.terrain_prob else 0.0)
                          for s in (-1, 1)}
        # lateral distance of edges from the road centre line outwards, per side
        self.edge = {}
        for s in (-1, 1):
            road_edge = self.road_x1 if s > 0 else -self.road_x0
            kerb = road_edge + self.kerb_w
            walk = kerb + self.sidewalk_w[s]
            terr = walk + self.terrain_w[s]
            self.edge[s] = (road_edge, kerb, walk, terr)
        # cross streets
        self.cross: list[tuple[float, float]] = []
        if cfg.cross_street_spacing > 0:
            z = self.z_first + rng.exponential(cfg.cross_street_spacing) * 0.8 + 15.0
            while z < self.z_hi - 30:
                width = rng.uniform(8.0, 14.0)
                self.cross.append((z, z + width))
                z += width + 40.0 + rng.exponential(cfg.cross_street_spacing)
        self.dash_len = rng.choice([3.0, 3.0, 4.5, 6.0])
        self.dash_period = self.dash_len + rng.choice([6.0, 9.0, 12.0])
        self.mark_w = rng.uniform(0.1, 0.16)
        self.edge_lines = bool(rng.random() < 0.6)
        self.centre_yellow = bool(two_way and rng.random() < 0.3)
        self.centre_double = bool(two_way and rng.random() < 0.5)
        # ego corridor: inliers are kept out of it where the camera drives
        self.occupied.append((-1.4, 1.4, self.z_first - 6.0, self.z_last + 12.0))

    def in_cross(self, z0: float, z1: float, margin: float = 0.0) -> bool:
        return any(z1 > a - margin and z0 < b + margin for a, b in self.cross)

    def next_cross_start(self, z: float) -> float:
        for a, b in self.cross:
            if b > z:
                return a
        return math.inf

    def free(self, x0: float, x1: float, z0: float, z1: float, margin: float = 0.5) -> bool:
        for a0, a1, b0, b1 in self.occupied:
            if x1 + margin > a0 and x0 - margin < a1 and z1 + margin > b0 and z0 - margin < b1:
                return False
        return True

    # ---- ground appearance model (rendered per pixel) ----------------------------------------------------
    def _ground_model(self) -> None:
        rng = self.rng
        asphalt = rng.uniform(70, 105)
        self.road_rgb = np.array([asphalt, asphalt + rng.uniform(-2, 3), asphalt + rng.uniform(0, 6)])
        walk_choice = rng.integers(0, 3)
        walk_rgb = [[150, 148, 145], [175, 165, 150], [150, 110, 100]][walk_choice]
        self.walk_rgb = _jit(rng, walk_rgb, 8)
        self.kerb_rgb = _jit(rng, [185, 183, 178], 8)
        terr = [[95, 115, 60], [120, 125, 75], [135, 120, 90]][rng.integers(0, 3)]
        self.terrain_rgb = _jit(rng, terr, 8)
        self.yard_rgb = _jit(rng, [110, 118, 75], 10)
        self.mark_rgb = _jit(rng, [218, 218, 212], 6)
        self.yellow_rgb = _jit(rng, [215, 175, 50], 6)
        self.tile = rng.choice([0.4, 0.5, 0.6, 1.0])
        self.gtex_off = rng.integers(0, _GROUND_TILE, 4)
        # band edges (X) and their label / colour / texture amplitude
        l_road, l_kerb, l_walk, l_terr = self.edge[-1]
        r_road, r_kerb, r_walk, r_terr = self.edge[1]
        self.band_edges = np.array([-l_terr, -l_walk, -l_kerb, -l_road, r_road, r_kerb, r_walk, r_terr],
                                   np.float32)
        # bands 0..8 from left to right; _BAND_WHITE / _BAND_YELLOW: lane markings (labelled road)
        # (+ _BAND_TRACK: worn tyre tracks, _BAND_JOINT: paving joints)
        self.band_label = np.array([TERRAIN, TERRAIN, SIDEWALK, SIDEWALK, ROAD, SIDEWALK, SIDEWALK, TERRAIN,
                                    TERRAIN, ROAD, ROAD, ROAD, SIDEWALK], np.uint8)
        self.band_rgb = np.array([self.yard_rgb, self.terrain_rgb, self.walk_rgb, self.kerb_rgb, self.road_rgb,
                                  self.kerb_rgb, self.walk_rgb, self.terrain_rgb, self.yard_rgb, self.mark_rgb,
                                  self.yellow_rgb, self.road_rgb * 0.94, self.walk_rgb * 0.8], np.float32)
        self.band_rgb *= self.gain.astype(np.float32)
        self.band_amp = np.array([0.2, 0.2, 0.06, 0.05, 0.07, 0.05, 0.06, 0.2, 0.2, 0.12, 0.12, 0.07, 0.06],
                                 np.float32)
        self.road_band = 4

    # ---- distant skyline --------------------------------------------------------------------------------
    def _skyline(self) -> None:
        rng = self.rng
        z = self.z_hi + 15.0
        span = 0.9 * z
        xs, ys = [-span], [0.0]
        x = -span
        kind_veg = rng.random() < 0.3
        while x < span:
            hgt = rng.uniform(4, 14) if kind_veg else rng.uniform(6, 38) * (0.4 + rng.random() * 0.8)
            step = rng.uniform(8, 30)
            xs += [x, x + step]
            ys += [hgt, hgt]
            x += step
        xs.append(span)
        ys.append(0.0)
        pts = np.column_stack([xs, ys, np.full(len(xs), z)])
        self.mesh.begin(_LAYER_SKYLINE, -span, span, z, z)
        col = _jit(rng, [95, 110, 95] if kind_veg else [140, 140, 145], 10)
        self.add(pts, col, VEGETATION if kind_veg else BUILDING, None, _MAT_BUILDING)
        if not kind_veg and rng.random() < 0.5:
            # a distant tree line in front of the buildings
            xs2 = np.linspace(-span, span, 90)
            ys2 = np.clip(3.0 + 2.5 * np.sin(xs2 * 0.11 + rng.uniform(0, 6)) + rng.normal(0, 1.2, 90), 0.5, 9)
            pts2 = np.column_stack([np.r_[xs2, span, -span], np.r_[ys2, 0, 0], np.full(92, z - 20)])
            self.mesh.begin(_LAYER_SKYLINE, -span, span, z - 20, z - 20)
            self.add(pts2, _jit(rng, [70, 90, 60], 8), VEGETATION, None, _MAT_VEG)

    # ---- buildings, walls, fences, hedges, trees behind the sidewalk --------------------------------------
    def _frontage(self, side: int) -> None:
        cfg, rng = self.cfg, self.rng
        line = self.edge[side][3]  # outer edge of terrain (or sidewalk)
        z = self.z_lo - rng.uniform(0, 10)
        style_h = rng.choice([0, 1, 2], p=[0.45, 0.35, 0.2])  # urban / suburban / mixed
        while z < self.z_hi:
            nc = self.next_cross_start(z)
            if self.in_cross(z, z + 0.1):
                for a, b in self.cross:
                    if a <= z < b:
                        z = b + rng.uniform(0.5, 3.0)
                continue
            if rng.random() < cfg.building_prob:
                length = min(rng.uniform(8.0, 40.0), nc - z - 0.5)
                if length < 4.0:
                    z = nc
                    continue
                setback = line + (rng.uniform(0.0, 5.0) if rng.random() < 0.35 else 0.0)
                self._building(side, setback, z, z + length, style_h)
                z += length + (rng.uniform(1.0, 10.0) if rng.random() < 0.35 else 0.0)
            else:
                length = min(rng.uniform(10.0, 45.0), nc - z - 0.5)
                if length < 3.0:
                    z = nc
                    continue
                r = rng.random()
                if r < cfg.wall_prob:
                    self._wall(side, line, z, z + length)
                elif r < cfg.wall_prob + cfg.fence_prob:
                    self._fence(side, line, z, z + length)
                else:
                    self._hedge(side, line, z, z + length)
                # trees / low buildings behind
                zz = z + rng.uniform(0, 6)
                while zz < z + length:
                    self._tree(side * (line + rng.uniform(2.0, 9.0)), zz, layer=_LAYER_BACK,
                               scale=rng.uniform(1.0, 1.6))
                    zz += rng.uniform(4.0, 10.0)
                if rng.random() < 0.5:
                    self._building(side, line + rng.uniform(10.0, 18.0), z, z + length, 1)
                z += length

    def _building(self, side: int, setback: float, z0: float, z1: float, style: int) -> None:
        rng = self.rng
        depth = rng.uniform(10, 20)
        floors = int(rng.integers(5, 11)) if style == 0 else int(rng.integers(1, 4)) if style == 1 else \
            int(rng.integers(2, 7))
        fh = rng.uniform(2.9, 3.6)
        height = floors * fh + rng.uniform(0.4, 1.5)
        base = _BUILDING_COLOURS[rng.integers(0, len(_BUILDING_COLOURS))]
        col = _jit(rng, base, 10)
        xf = side * setback
        xb = side * (setback + depth)
        nrm = np.array([-float(side), 0.0, 0.0])
        self.mesh.begin(_LAYER_BUILDING, xf, xb, z0, z1)
        # near end face (perpendicular to the road) first, then the facade
        self.add(np.array([[xf, 0, z0], [xb, 0, z0], [xb, height, z0], [xf, height, z0]]), col * 0.97, BUILDING,
                 np.array([0.0, 0.0, -1.0]), _MAT_BUILDING)
        self.add(_rect_x(xf, z0, z1, 0.0, height), col, BUILDING, nrm, _MAT_BUILDING)
        xw = xf - side * 0.02
        # parapet / cornice band
        self.add(_rect_x(xw, z0, z1, height - rng.uniform(0.3, 0.8), height), col * 0.8, BUILDING, nrm,
                 _MAT_BUILDING)
        # windows, grouped into a few colours (one fillPoly call per group)
        spacing = rng.uniform(2.2, 4.0)
        ww = spacing * rng.uniform(0.4, 0.65)
        wh = fh * rng.uniform(0.4, 0.62)
        length = z1 - z0
        nwin = max(1, int((length - 1.0) / spacing))
        margin = (length - nwin * spacing) / 2.0
        zc = z0 + margin + spacing * (np.arange(nwin) + 0.5)
        shop = rng.random() < (0.6 if style == 0 else 0.25)
        first_floor = 1 if shop else 0
        fl = np.arange(first_floor, floors)
        yc = fl * fh + fh * 0.55
        if len(fl):
            Z, Y = np.meshgrid(zc, yc)
            Z, Y = Z.ravel(), Y.ravel()
            k = len(Z)
            wins = np.empty((k, 4, 3))
            wins[:, :, 0] = xw
            wins[:, 0, 1] = wins[:, 1, 1] = Y - wh / 2
            wins[:, 2, 1] = wins[:, 3, 1] = Y + wh / 2
            wins[:, 0, 2] = wins[:, 3, 2] = Z - ww / 2
            wins[:, 1, 2] = wins[:, 2, 2] = Z + ww / 2
            group = rng.choice(3, size=k, p=[0.6, 0.3, 0.1])
            glass = [_jit(rng, [45, 55, 65], 8), _jit(rng, [110, 130, 150], 10), _jit(rng, [150, 140, 110], 10)]
            frame = col * 0.75 if rng.random() < 0.5 else np.array([225.0, 225, 220])
            # frames (slightly larger) in one call, then glass groups
            fr = wins.copy()
            fr[:, 0:2, 1] -= 0.08
            fr[:, 2:4, 1] += 0.08
            fr[:, [0, 3], 2] -= 0.08
            fr[:, [1, 2], 2] += 0.08
            self.add(list(fr), frame, BUILDING, nrm, _MAT_BUILDING)
            for g in range(3):
                sel = wins[group == g]
                if len(sel):
                    self.add(list(sel), glass[g], BUILDING, nrm, _MAT_GLASS)
        if shop:
            shop_col = _jit(rng, [50, 55, 60], 10)
            n_shop = max(1, int(length / rng.uniform(4, 9)))
            edges = np.linspace(z0 + 0.5, z1 - 0.5, n_shop + 1)
            panes = [_rect_x(xw, a + 0.3, b - 0.3, 0.4, fh * 0.85) for a, b in zip(edges[:-1], edges[1:])
                     if b - a > 1.0]
            if panes:
                self.add(panes, shop_col, BUILDING, nrm, _MAT_GLASS)
            self.add(_rect_x(xw - side * 0.01, z0, z1, fh * 0.88, fh * 1.02), _jit(rng, col * 0.6, 20), BUILDING,
                     nrm, _MAT_BUILDING)
        else:
            dz = rng.uniform(z0 + 1.0, max(z0 + 1.1, z1 - 2.0))
            self.add(_rect_x(xw, dz, dz + 1.1, 0.0, 2.2), _jit(rng, [90, 65, 45], 15), BUILDING, nrm,
                     _MAT_BUILDING)
        fp = np.array([[min(xf, xb), z0], [max(xf, xb), z0], [max(xf, xb), z1], [min(xf, xb), z1]])
        self.cast_shadow(fp, height)

    def _wall(self, side: int, line: float, z0: float, z1: float) -> None:
        rng = self.rng
        h = rng.uniform(0.8, 2.6)
        col = _jit(rng, [[170, 168, 160], [160, 120, 100], [190, 185, 170], [120, 120, 118]][rng.integers(0, 4)], 8)
        x = side * (line + 0.05)
        xb = x + side * 0.3
        nrm = np.array([-float(side), 0.0, 0.0])
        self.mesh.begin(_LAYER_FRONTAGE, x, xb, z0, z1)
        self.add(np.array([[x, 0, z0], [xb, 0, z0], [xb, h, z0], [x, h, z0]]), col, WALL, np.array([0, 0, -1.0]),
                 _MAT_BUILDING)
        self.add(_rect_x(x, z0, z1, 0.0, h), col, WALL, nrm, _MAT_BUILDING)
        self.add(_rect_x(x - side * 0.01, z0, z1, h - 0.12, h), col * 0.8, WALL, nrm, _MAT_BUILDING)
        self.cast_shadow(np.array([[min(x, xb), z0], [max(x, xb), z0], [max(x, xb), z1], [min(x, xb), z1]]), h)

    def _fence(self, side: int, line: float, z0: float, z1: float) -> None:
        rng = self.rng
        h = rng.uniform(1.0, 2.0)
        x = side * (line + 0.05)
        nrm = np.array([-float(side), 0.0, 0.0])
        self.mesh.begin(_LAYER_FRONTAGE, x, x, z0, z1)
        if rng.random() < 0.4:  # solid wooden fence with planks
            col = _jit(rng, [125, 95, 65], 12)
            self.add(_rect_x(x, z0, z1, 0.0, h), col, FENCE, nrm, _MAT_ROUGH)
            zs = np.arange(z0, z1, rng.uniform(0.12, 0.2))
            planks = [_rect_x(x - side * 0.01, a, a + 0.02, 0.0, h) for a in zs[1:]]
            if planks:
                self.add(planks, col * 0.7, FENCE, nrm, _MAT_ROUGH)
        else:  # metal posts and rails
            col = _jit(rng, [[90, 95, 95], [60, 80, 65], [160, 160, 155]][rng.integers(0, 3)], 8)
            gap = rng.uniform(0.12, 0.25) if rng.random() < 0.5 else rng.uniform(1.8, 2.6)
            zs = np.arange(z0, z1, gap)
            pw = 0.03 if gap < 0.5 else 0.07
            posts = [_rect_x(x, a, a + pw, 0.0, h) for a in zs]
            self.add(posts, col, FENCE, nrm, _MAT_CAR)
            rails = [_rect_x(x - side * 0.01, z0, z1, y, y + 0.05) for y in (0.1, h * 0.5, h - 0.05)]
            self.add(rails, col * 0.9, FENCE, nrm, _MAT_CAR)

    def _hedge(self, side: int, line: float, z0: float, z1: float) -> None:
        rng = self.rng
        h = rng.uniform(0.8, 1.8)
        x = side * (line + 0.1)
        xb = x + side * rng.uniform(0.6, 1.2)
        self.mesh.begin(_LAYER_FRONTAGE, x, xb, z0, z1)
        col = _jit(rng, [55, 85, 40], 10)
        faces = _box(min(x, xb), max(x, xb), 0.0, h, z0, z1)
        self.add_faces(faces, col, VEGETATION, _MAT_VEG)
        self.cast_shadow(np.array([[min(x, xb), z0], [max(x, xb), z0], [max(x, xb), z1], [min(x, xb), z1]]), h)

    # ---- trees, poles, signs, traffic lights ------------------------------------------------------------
    def _tree(self, x: float, z: float, layer: int = _LAYER_STREET, scale: float = 1.0) -> None:
        rng = self.rng
        crown_y = rng.uniform(3.5, 6.0) * scale
        r = rng.uniform(1.5, 3.0) * scale
        trunk_w = rng.uniform(0.2, 0.35) * scale
        self.mesh.begin(layer, x - 0.2, x + 0.2, z - 0.2, z + 0.2)
        self.add(_rect_z(z, x - trunk_w / 2, x + trunk_w / 2, 0.0, crown_y), _jit(rng, [80, 65, 50], 10),
                 VEGETATION, None, _MAT_ROUGH)
        base = _jit(rng, [[60, 90, 40], [75, 100, 45], [50, 75, 40], [90, 110, 55]][rng.integers(0, 4)], 8)
        nb = int(rng.integers(4, 8))
        u = rng.random((nb, 4))
        rr = r * (0.55 + 0.3 * u[:, 2])
        c, s = _C16
        blobs = np.empty((nb, 16, 3))
        blobs[:, :, 0] = (x + (u[:, 0] * 1.4 - 0.7) * r)[:, None] + (rr * (0.9 + 0.3 * u[:, 3]))[:, None] * c
        blobs[:, :, 1] = (crown_y + (u[:, 1] - 0.4) * r)[:, None] + rr[:, None] * s
        blobs[:, :, 2] = (z - 0.01 * np.arange(nb))[:, None]
        for i in range(nb):
            self.add(blobs[i], base * (0.75 + 0.4 * i / max(1, nb - 1)), VEGETATION, None, _MAT_VEG)
        # crown shadow: offset ellipse on the ground
        if not self.overcast and z < self.z_last + 90.0:
            c, s = _C16
            off = -np.array([self.sun[0], self.sun[2]]) / max(self.sun[1], 0.5) * crown_y
            rj = r * 0.85 * (0.75 + 0.25 * rng.random(16))  # leafy, irregular outline
            self.shadows.begin(0, x - r + off[0], x + r + off[0], z - r + off[1], z + r + off[1])
            pts = np.column_stack([x + off[0] + rj * c, np.zeros(16), z + off[1] + rj * s])
            self.shadows.add(pts, np.array([self.shadow_strength * 0.8] * 3), 0, None, 1.0)

    def _pole(self, x: float, z: float, side: int, kind: str) -> None:
        rng = self.rng
        grey = _jit(rng, [[120, 122, 125], [70, 75, 72], [150, 150, 148]][rng.integers(0, 3)], 6)
        pw = rng.uniform(0.1, 0.18)
        if kind == "lamp":
            h = rng.uniform(6.0, 9.0)
            arm = rng.uniform(1.2, 2.5)
            xa = x - side * arm
            self.mesh.begin(_LAYER_STREET, x - pw, x + pw, z - pw, z + pw)
            self.add(_rect_z(z, x - pw / 2, x + pw / 2, 0.0, h), grey, POLE, None, _MAT_CAR)
            self.add(_rect_z(z, min(x, xa), max(x, xa), h - 0.1, h), grey, POLE, None, _MAT_CAR)
            self.add(_rect_z(z - 0.01, xa - 0.35, xa + 0.35, h - 0.25, h - 0.02), grey * 0.8, POLE, None, _MAT_CAR)
            if rng.random() < self.cfg.sign_prob:
                self._sign_plate(x, z - 0.05, rng.uniform(2.2, 2.8))
        elif kind == "sign":
            h = rng.uniform(2.6, 3.4)
            self.mesh.begin(_LAYER_STREET, x - pw, x + pw, z - pw, z + pw)
            self.add(_rect_z(z, x - 0.04, x + 0.04, 0.0, h), grey, POLE, None, _MAT_CAR)
            self._sign_plate(x, z - 0.03, h - 0.4)
        elif kind == "light":
            h = rng.uniform(3.0, 4.2)
            self.mesh.begin(_LAYER_STREET, x - pw, x + pw, z - pw, z + pw)
            self.add(_rect_z(z, x - pw / 2, x + pw / 2, 0.0, h), grey, POLE, None, _MAT_CAR)
            self._traffic_light(x, z - 0.05, h)
            if rng.random() < 0.5:  # overhead arm with a second light
                arm = rng.uniform(3.0, 6.0)
                xa = x - side * arm
                self.add(_rect_z(z, min(x, xa), max(x, xa), h + 1.0, h + 1.15), grey, POLE, None, _MAT_CAR)
                self.add(_rect_z(z, x - pw / 2, x + pw / 2, h, h + 1.15), grey, POLE, None, _MAT_CAR)
                self._traffic_light(xa + side * 0.3, z - 0.05, h + 1.0)
        self.cast_shadow(np.array([[x - pw / 2, z - pw / 2], [x + pw / 2, z - pw / 2], [x + pw / 2, z + pw / 2],
                                   [x - pw / 2, z + pw / 2]]), h, self.shadow_strength * 0.9)

    def _sign_plate(self, x: float, z: float, y: float) -> None:
        rng = self.rng
        shape = rng.integers(0, 4)
        s = rng.uniform(0.55, 0.8)
        front = np.array([0.0, 0.0, -1.0])
        if shape == 0:  # round prohibition sign
            self.add(_ellipse_z(z, x, y, s / 2, s / 2, 24), [200, 30, 35], TRAFFIC_SIGN, front, _MAT_FLAT)
            self.add(_ellipse_z(z - 0.005, x, y, s * 0.38, s * 0.38, 24), [235, 235, 235], TRAFFIC_SIGN, front,
                     _MAT_FLAT)
            self.add(_rect_z(z - 0.01, x - s * 0.2, x + s * 0.2, y - s * 0.1, y + s * 0.1), [30, 30, 30],
                     TRAFFIC_SIGN, front, _MAT_FLAT)
        elif shape == 1:  # warning triangle
            tri = [[x - s / 2, y - s * 0.4], [x + s / 2, y - s * 0.4], [x, y + s * 0.5]]
            self.add(_poly_z(z, tri), [205, 35, 35], TRAFFIC_SIGN, front, _MAT_FLAT)
            self.add(_shrink(_poly_z(z - 0.005, tri), 0.72), [240, 235, 225], TRAFFIC_SIGN, front, _MAT_FLAT)
        elif shape == 2:  # blue mandatory / information
            self.add(_ellipse_z(z, x, y, s / 2, s / 2, 24) if rng.random() < 0.5 else
                     _rect_z(z, x - s / 2, x + s / 2, y - s / 2, y + s / 2), [30, 80, 170], TRAFFIC_SIGN, front,
                     _MAT_FLAT)
            self.add(_rect_z(z - 0.005, x - s * 0.08, x + s * 0.08, y - s * 0.3, y + s * 0.25), [235, 235, 235],
                     TRAFFIC_SIGN, front, _MAT_FLAT)
        else:  # priority diamond / rectangle
            d = [[x, y - s / 2], [x + s / 2, y], [x, y + s / 2], [x - s / 2, y]]
            self.add(_poly_z(z, d), [240, 240, 240], TRAFFIC_SIGN, front, _MAT_FLAT)
            self.add(_shrink(_poly_z(z - 0.005, d), 0.6), [230, 190, 30], TRAFFIC_SIGN, front, _MAT_FLAT)

    def _traffic_light(self, x: float, z: float, y: float) -> None:
        rng = self.rng
        front = np.array([0.0, 0.0, -1.0])
        w, h = 0.32, 0.9
        self.add(_rect_z(z, x - w / 2, x + w / 2, y - h, y), [35, 35, 35], TRAFFIC_LIGHT, front, _MAT_CAR)
        lit = rng.integers(0, 3)
        cols = [[255, 60, 40], [255, 180, 40], [60, 230, 120]]
        for i in range(3):
            c = cols[i] if i == lit else [60, 60, 55]
            yy = y - 0.15 - i * 0.29
            self.mesh.add(_ellipse_z(z - 0.01, x, yy, 0.1, 0.1, 12), np.array(c, float), TRAFFIC_LIGHT, front,
                          1.0 if i == lit else self.shade(front), _MAT_LIGHT)

    def _street_furniture(self, side: int) -> None:
        cfg, rng = self.cfg, self.rng
        road_edge, kerb, walk, terr = self.edge[side]
        # lamp posts
        z = self.z_small + rng.uniform(0, cfg.pole_spacing_range[1])
        while z < self.z_hi:
            if not self.in_cross(z - 1, z + 1):
                self._pole(side * (kerb + 0.4), z, side, "lamp")
            z += _u(rng, cfg.pole_spacing_range)
        # sign posts
        z = self.z_small + rng.uniform(0, 60)
        while z < self.z_hi:
            if not self.in_cross(z - 1, z + 1):
                self._pole(side * (kerb + 0.3), z, side, "sign")
            z += rng.uniform(35, 110)
        # traffic lights at intersections (right side before, left side after)
        for a, b in self.cross:
            zl = a - 1.0 if side > 0 else b + 1.0
            if self.z_small < zl < self.z_hi:
                self._pole(side * (kerb + 0.5), zl, side, "light")
        # street trees
        if rng.random() < cfg.tree_prob:
            in_terrain = self.terrain_w[side] > 1.2
            xt = side * ((walk + terr) / 2 if in_terrain else kerb + min(1.0, self.sidewalk_w[side] / 2))
            z = self.z_small + rng.uniform(0, 8)
            while z < self.z_hi:
                if not self.in_cross(z - 3, z + 3):
                    self._tree(xt + rng.uniform(-0.2, 0.2), z)
                z += _u(rng, cfg.tree_spacing_range)

    # ---- vehicles -----------------------------------------------------------------------------------------
    def _vehicle(self, xc: float, z0: float, forward: bool, kind: str, parked: bool = False) -> float:
        """Add a vehicle whose near end is at ``z0``; returns its length.  ``forward``: drives along +Z
        (we see its rear); otherwise oncoming (we see its front)."""
        rng = self.rng
        if kind == "car":
            L, W, H = rng.uniform(3.9, 4.9), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.65)
            label = CAR
        elif kind == "van":
            L, W, H = rng.uniform(4.8, 5.5), rng.uniform(1.9, 2.05), rng.uniform(1.9, 2.5)
            label = CAR
        elif kind == "truck":
            L, W, H = rng.uniform(7.0, 11.0), rng.uniform(2.3, 2.5), rng.uniform(3.0, 3.8)
            label = TRUCK
        else:  # bus
            L, W, H = rng.uniform(11.0, 13.0), 2.55, rng.uniform(3.0, 3.3)
            label = BUS
        z1 = z0 + L
        x0, x1 = xc - W / 2, xc + W / 2
        col = _CAR_COLOURS[rng.choice(len(_CAR_COLOURS), p=_CAR_COLOUR_P / _CAR_COLOUR_P.sum())]
        if kind == "bus":
            col = _jit(rng, [[200, 40, 40], [240, 190, 40], [230, 230, 225], [40, 110, 180]][rng.integers(0, 4)], 10)
        col = _jit(rng, col, 6)
        dark = np.array([22.0, 22, 24])
        glass = _jit(rng, [40, 50, 60], 6)
        self.mesh.begin(_LAYER_STREET, x0, x1, z0, z1)
        wr = 0.33 if kind in ("car", "van") else 0.5
        clear = 0.25 if kind in ("car", "van") else 0.45
        axles = (z0 + 0.8 + wr * 0.5, z1 - 0.8 - wr * 0.5) if kind in ("car", "van") else (z0 + 1.6, z1 - 2.5)
        # tyres and underbody: one dark silhouette (the body hides most of it)
        under = [f for f, _n in _box(x0 + 0.06, x1 - 0.06, 0.0, clear + 0.1, axles[0] - wr, axles[1] + wr)]
        self.add(under, dark, label, None, _MAT_FLAT)
        near = np.array([0.0, 0.0, -1.0])
        if kind == "car":
            hb = clear + rng.uniform(0.55, 0.7)
            self.add_faces(_box(x0, x1, clear, hb, z0, z1), col, label, _MAT_CAR)
            a, b = (0.28, 0.18) if forward else (0.18, 0.3)
            cab = np.array([[x0 + 0.06, z0 + a * L], [x1 - 0.06, z0 + a * L], [x1 - 0.06, z1 - b * L],
                            [x0 + 0.06, z1 - b * L]])
            faces = _prism(cab, hb, H, top_scale=0.78)
            for verts, nrm in faces:
                self.add(verts, col, label, nrm, _MAT_CAR)
                if nrm[1] < 0.9:
                    win = _shrink(verts, 0.82)
                    win[:, 1] = np.minimum(win[:, 1], H - 0.06)
                    self.add(win + nrm * 0.01, glass, label, nrm, _MAT_GLASS)
        else:
            self.add_faces(_box(x0, x1, clear, H, z0, z1), col, label, _MAT_CAR)
            ybot = H * (0.45 if kind == "bus" else 0.55)
            for sx, nrm in ((x0 - 0.01, np.array([-1.0, 0, 0])), (x1 + 0.01, np.array([1.0, 0, 0]))):
                if kind == "bus":
                    self.add(_rect_x(sx, z0 + 0.3, z1 - 0.3, ybot, H - 0.35), glass, label, nrm, _MAT_GLASS)
                else:
                    cab_z = (z0 + 0.3, z0 + 1.6) if not forward else (z1 - 1.6, z1 - 0.3)
                    self.add(_rect_x(sx, cab_z[0], cab_z[1], ybot, H - 0.5), glass, label, nrm, _MAT_GLASS)
            if kind != "truck" or not forward:
                self.add(_rect_z(z0 - 0.01, x0 + 0.15, x1 - 0.15, ybot, H - 0.3), glass, label, near, _MAT_GLASS)
        # wheels on the side that can face the camera (the camera stays at X = 0)
        sides = [(x0 - 0.01, np.array([-1.0, 0, 0]))] if x0 > 0 else [(x1 + 0.01, np.array([1.0, 0, 0]))] \
            if x1 < 0 else []
        for sx, nrm in sides:
            self.add([_ellipse_x(sx, az, wr, wr, wr) for az in axles], dark, label, nrm, _MAT_FLAT)
            if z0 < self.z_last + 60.0:
                self.add([_ellipse_x(sx + nrm[0] * 0.01, az, wr, wr * 0.5, wr * 0.5) for az in axles],
                         [150, 150, 150], label, nrm, _MAT_CAR)
        # lights and plate on the visible end
        ly = clear + 0.35 if kind in ("car", "van") else clear + 0.4
        lamp = ([110, 30, 30] if parked else [170, 25, 25]) if forward else [235, 235, 220]
        self.add([_rect_z(z0 - 0.02, x0 + 0.08, x0 + 0.35, ly, ly + 0.14),
                  _rect_z(z0 - 0.02, x1 - 0.35, x1 - 0.08, ly, ly + 0.14)], lamp, label, near, _MAT_LIGHT)
        self.add(_rect_z(z0 - 0.02, xc - 0.26, xc + 0.26, clear + 0.1, clear + 0.22), [230, 230, 225], label, near,
                 _MAT_FLAT)
        if rng.random() < 0.6 and kind in ("car", "van"):  # bumper
            self.add(_rect_z(z0 - 0.015, x0, x1, clear, clear + 0.08), col * 0.5 + 20, label, near, _MAT_CAR)
        fp = np.array([[x0, z0], [x1, z0], [x1, z1], [x0, z1]])
        self.cast_shadow(fp, H * 0.85)
        self.contact_shadow(fp, 0.6)
        self.occupied.append((x0, x1, z0, z1))
        return L

    def _vehicle_kind(self) -> str:
        r = self.rng.random()
        if r < self.cfg.truck_prob:
            return "truck"
        if r < self.cfg.truck_prob + self.cfg.bus_prob:
            return "bus"
        return "van" if self.rng.random() < 0.12 else "car"

    def _traffic(self) -> None:
        cfg, rng = self.cfg, self.rng
        n = _ri(rng, cfg.car_count_range)
        zmin, zmax = self.z_first + 6.0, self.z_last + min(cfg.view_distance, 160.0)
        # keep the ego lane free of vehicles up to beyond its farthest anomaly (they would hide it)
        ego_lane_x = self.lanes_x0 + (self.ego_lane + 0.5) * self.lane_w
        ego_clear = max([a.z_near + a.size[2] + 8.0 for a in self.anomalies
                         if abs(a.x_center - ego_lane_x) < self.lane_w / 2 + 0.3], default=-math.inf)
        for _ in range(n):
            for _attempt in range(8):
                lane = int(rng.integers(0, self.n_lanes))
                if lane == self.ego_lane and rng.random() < 0.5:
                    continue  # fewer vehicles straight ahead
                if lane == self.ego_lane:
                    zmin_l = max(zmin, ego_clear)
                else:
                    zmin_l = zmin
                oncoming = lane < self.n_oncoming
                kind = self._vehicle_kind()
                xc = self.lanes_x0 + (lane + 0.5) * self.lane_w + rng.uniform(-0.3, 0.3)
                z0 = rng.uniform(zmin_l, zmax) if rng.random() < 0.3 else zmin_l + rng.exponential(30.0)
                L = {"car": 4.9, "van": 5.5, "truck": 11.0, "bus": 13.0}[kind]
                if z0 > zmax or not self.free(xc - 1.3, xc + 1.3, z0, z0 + L, margin=1.5):
                    continue
                self._vehicle(xc, z0, not oncoming, kind)
                break

    def _parked_cars(self, side: int) -> None:
        rng = self.rng
        if self.park[side] <= 0:
            return
        density = _u(rng, self.cfg.parked_car_density)
        xc = side * (self.edge[side][0] - 1.1)
        z = self.z_small - 4.0 + rng.uniform(0, 6)
        while z < min(self.z_hi, self.z_last + 150):
            if rng.random() < density * 6.0 and not self.in_cross(z - 1, z + 6, margin=2.0):
                kind = "van" if rng.random() < 0.12 else "car"
                if self.free(xc - 0.9, xc + 0.9, z, z + 5.0, margin=0.3):
                    L = self._vehicle(xc + rng.uniform(-0.15, 0.15), z, True if side > 0 else rng.random() < 0.5,
                                      kind, parked=True)
                    z += L + rng.uniform(0.6, 2.0)
                    continue
            z += rng.uniform(2.0, 8.0)

    # ---- people ---------------------------------------------------------------------------------------------
    def _person(self, x: float, z: float, label: int = PERSON, height: float | None = None,
                pose: float | None = None, y0: float = 0.0, sitting: bool = False) -> None:
        rng = self.rng
        H = height if height is not None else rng.uniform(1.55, 1.92)
        s = H / 1.75
        skin = _jit(rng, [[225, 185, 155], [190, 140, 105], [120, 80, 55], [235, 200, 175]][rng.integers(0, 4)], 8)
        shirt = _jit(rng, [[40, 40, 45], [180, 30, 30], [40, 70, 140], [220, 220, 215], [90, 110, 70],
                           [140, 90, 50], [200, 170, 60], [100, 100, 105]][rng.integers(0, 8)], 12)
        pants = _jit(rng, [[30, 35, 55], [35, 35, 38], [150, 130, 100], [70, 70, 75]][rng.integers(0, 4)], 8)
        hair = _jit(rng, [[30, 25, 20], [90, 60, 35], [180, 150, 90], [60, 55, 50]][rng.integers(0, 4)], 6)
        spread = (rng.uniform(0.0, 0.18) if pose is None else pose) * s
        if label == PERSON:
            self.mesh.begin(_LAYER_STREET, x - 0.3, x + 0.3, z - 0.2, z + 0.2)
        hip = y0 + 0.92 * s if not sitting else y0
        sh = hip + 0.55 * s
        lw = 0.075 * s
        if not sitting:
            for sgn in (-1, 1):
                foot = x + sgn * (0.07 * s + spread)
                leg = [[x + sgn * 0.02 * s - lw, hip], [x + sgn * 0.02 * s + lw, hip], [foot + lw, y0],
                       [foot - lw, y0]]
                self.add(_poly_z(z + 0.01, leg), pants, label, None, _MAT_CLOTH)
        else:
            self.add(_rect_z(z + 0.01, x - 0.16 * s, x + 0.16 * s, y0 - 0.45 * s, y0 + 0.05), pants, label, None,
                     _MAT_CLOTH)
        torso = [[x - 0.15 * s, hip], [x + 0.15 * s, hip], [x + 0.2 * s, sh], [x - 0.2 * s, sh]]
        for sgn in (-1, 1):
            arm = [[x + sgn * 0.17 * s, sh], [x + sgn * 0.23 * s, sh - 0.02], [x + sgn * 0.26 * s, hip - 0.05 * s],
                   [x + sgn * 0.19 * s, hip - 0.05 * s]]
            self.add(_poly_z(z + 0.005, arm), shirt * 0.85, label, None, _MAT_CLOTH)
        self.add(_poly_z(z, torso), shirt, label, None, _MAT_CLOTH)
        self.add(_rect_z(z - 0.001, x - 0.04 * s, x + 0.04 * s, sh - 0.02, sh + 0.08 * s), skin, label, None,
                 _MAT_CLOTH)
        self.add(_ellipse_z(z - 0.002, x, sh + 0.17 * s, 0.1 * s, 0.12 * s, 12), skin, label, None, _MAT_CLOTH)
        self.add(_ellipse_z(z - 0.003, x, sh + 0.22 * s, 0.105 * s, 0.075 * s, 12), hair, label, None, _MAT_CLOTH)
        if label == PERSON:
            fp = np.array([[x - 0.25, z - 0.15], [x + 0.25, z - 0.15], [x + 0.25, z + 0.15], [x - 0.25, z + 0.15]])
            self.cast_shadow(fp, H * 0.9, self.shadow_strength * 0.9)

    def _rider(self, x: float, z: float, crossing: bool) -> None:
        rng = self.rng
        frame = _jit(rng, [[30, 30, 30], [180, 30, 30], [30, 60, 150], [200, 200, 200]][rng.integers(0, 4)], 8)
        dark = np.array([25.0, 25, 25])
        self.mesh.begin(_LAYER_STREET, x - 0.9, x + 0.9, z - 0.3, z + 0.3)
        if crossing:  # side view: bicycle along X
            r = 0.34
            for wx in (x - 0.52, x + 0.52):
                outer = _ellipse_z(z + 0.02, wx, r, r, r, 24)
                inner = _ellipse_z(z + 0.02, wx, r, r * 0.86, r * 0.86, 24)
                self.add([outer, inner], dark, BICYCLE, None, _MAT_FLAT)
            bars = [[[x - 0.52, r], [x, r + 0.02], [x + 0.1, r + 0.45], [x - 0.2, r + 0.45]],
                    [[x, r], [x + 0.52, r], [x + 0.4, r + 0.5], [x + 0.32, r + 0.5]]]
            for b in bars:
                self.add(_poly_z(z + 0.015, b), frame, BICYCLE, None, _MAT_CAR)
            self._person(x - 0.05, z, RIDER, height=rng.uniform(1.6, 1.85), y0=r + 0.5, sitting=True)
        else:  # seen from behind, riding along the road
            self.add(_rect_z(z + 0.05, x - 0.03, x + 0.03, 0.0, 0.68), dark, BICYCLE, None, _MAT_FLAT)
            self.add(_rect_z(z + 0.04, x - 0.05, x + 0.05, 0.35, 0.8), frame, BICYCLE, None, _MAT_CAR)
            self.add(_rect_z(z + 0.06, x - 0.28, x + 0.28, 1.0, 1.04), frame, BICYCLE, None, _MAT_CAR)
            self._person(x, z, RIDER, height=rng.uniform(1.6, 1.85), y0=0.8, sitting=True)
        fp = np.array([[x - 0.4, z - 0.4], [x + 0.4, z - 0.4], [x + 0.4, z + 0.4], [x - 0.4, z + 0.4]])
        self.cast_shadow(fp, 1.6, self.shadow_strength * 0.9)
        self.occupied.append((x - 0.9, x + 0.9, z - 0.5, z + 0.5))

    def _people(self) -> None:
        cfg, rng = self.cfg, self.rng
        n = _ri(rng, cfg.person_count_range)
        for _ in range(n):
            if self.cross and rng.random() < 0.25:
                a, _b = self.cross[int(rng.integers(0, len(self.cross)))]
                z = a - rng.uniform(1.5, 4.0)
                x = rng.uniform(self.road_x0 + 0.5, self.road_x1 - 0.5)
                if not self.free(x - 0.3, x + 0.3, z - 0.3, z + 0.3, margin=0.3):
                    continue
                self.occupied.append((x - 0.3, x + 0.3, z - 0.3, z + 0.3))
            else:
                side = 1 if rng.random() < 0.5 else -1
                _, kerb, walk, _ = self.edge[side]
                x = side * rng.uniform(kerb + 0.3, walk - 0.2)
                z = self.z_first + 4.0 + rng.exponential(30.0)
                if self.in_cross(z - 1, z + 1):
                    continue
            self._person(x, z)
            if rng.random() < 0.3:  # walking in pairs
                self._person(x + rng.choice([-0.6, 0.6]), z + rng.uniform(-0.5, 0.5))
        if rng.random() < cfg.rider_prob:
            crossing = bool(self.cross) and rng.random() < 0.3
            for _attempt in range(6):
                if crossing:
                    a, _b = self.cross[int(rng.integers(0, len(self.cross)))]
                    z = a - rng.uniform(1.5, 4.0)
                    x = rng.uniform(self.road_x0 + 1.0, self.road_x1 - 1.0)
                else:
                    x = self.lanes_x1 - rng.uniform(0.6, 1.0)
                    z = self.z_first + rng.uniform(8.0, 60.0)
                if self.free(x - 0.9, x + 0.9, z - 0.5, z + 0.5, margin=0.5):
                    self._rider(x, z, crossing)
                    break

    # ---- anomalies -------------------------------------------------------------------------------------
    def _anomalies(self) -> None:
        cfg, rng = self.cfg, self.rng
        n = _ri(rng, cfg.anomaly_count_range)
        travel = self.z_last - self.z_first
        placed: list[tuple[float, float, float]] = []
        half_fov = math.tan(math.radians(cfg.hfov_deg) / 2.0)
        for _ in range(n):
            kind = str(cfg.anomaly_kinds[int(rng.integers(0, len(cfg.anomaly_kinds)))])
            size = _u(rng, cfg.anomaly_size_range)
            for _attempt in range(30):
                if rng.random() < cfg.anomaly_ego_lane_prob or self.n_lanes == 1:
                    lane = self.ego_lane
                else:
                    lane = int(rng.integers(0, self.n_lanes))
                half = self.lane_w / 2.0 - min(size, self.lane_w * 0.8) / 2.0
                xc = self.lanes_x0 + (lane + 0.5) * self.lane_w + rng.uniform(-half, half) * 0.8
                d = rng.uniform(cfg.anomaly_distance_range[0], cfg.anomaly_distance_range[1] + travel)
                z = self.z_first + d
                if abs(xc) + size > 0.9 * d * half_fov:  # out of the (first) view
                    continue
                if all(abs(z - pz) > (size + ps) * 0.8 + 0.5 or abs(xc - px) > (size + ps) * 0.8 + 0.3
                       for px, pz, ps in placed):
                    break
            else:
                continue
            placed.append((xc, z, size))
            self._anomaly(len(self.anomalies) + 1, kind, xc, z, size)

    def _anomaly(self, idx: int, kind: str, xc: float, z: float, size: float) -> None:
        """Build anomaly ``idx`` with its near contact point at ``(xc, z)``."""
        rng = self.rng
        pattern = str(rng.choice(["solid", "stripes", "checker", "spots"], p=[0.3, 0.3, 0.2, 0.2]))
        c1 = _ANOMALY_VIVID[rng.integers(0, len(_ANOMALY_VIVID))]
        c2 = _ANOMALY_VIVID[rng.integers(0, len(_ANOMALY_VIVID))]
        if np.abs(c1 - c2).sum() < 120:
            c2 = 255.0 - c1
        spots = np.zeros((0, 3))
        mat = _MAT_ANOM
        yaw = rng.uniform(-0.7, 0.7)
        ref_y = size * 0.4
        label = ROAD  # the support surface
        if kind in ("box", "crate"):
            w = size * rng.uniform(0.5, 1.0)
            length = size * rng.uniform(0.5, 1.0)
            h = size * rng.uniform(0.4, 0.9)
            if rng.random() < 0.5:
                w = size
            else:
                length = size
            fp = _rot_rect(0.0, 0.0, w, length, yaw)
            fp[:, 0] += xc
            fp[:, 1] += z - fp[:, 1].min()
            if kind == "box" and rng.random() < 0.35:
                c1 = _jit(rng, [175, 135, 85], 12)  # cardboard with coloured tape / print
                pattern = "solid"
            if kind == "crate" and rng.random() < 0.5:
                c1 = _jit(rng, [170, 125, 70], 12)  # wooden crate
                c2 = c1 * 0.6
                pattern = "stripes"
            faces = _prism(fp, 0.0, h)
            size3 = (float(np.ptp(fp[:, 0])), h, float(np.ptp(fp[:, 1])))
            self.mesh.begin(_LAYER_STREET, float(fp[:, 0].min()), float(fp[:, 0].max()), z,
                            float(fp[:, 1].max()), anomaly=idx)
            self.add_faces(faces, c1, label, mat, patterned=True)
            if kind == "box":
                top = faces[-1][0]
                tape = _shrink(top, 1.0)
                mid = (tape[0] + tape[1]) / 2, (tape[3] + tape[2]) / 2
                dirv = (tape[1] - tape[0]) * 0.08
                strip = np.array([mid[0] - dirv, mid[0] + dirv, mid[1] + dirv, mid[1] - dirv])
                strip[:, 1] += 0.005
                self.add(strip, _jit(rng, [225, 200, 120], 20), label, np.array([0, 1.0, 0]), _MAT_FLAT)
            else:  # crate slats: darker horizontal lines on the side faces
                for verts, nrm in faces[:-1]:
                    for t in (0.33, 0.66):
                        b0 = verts[0] + (verts[3] - verts[0]) * t
                        b1 = verts[1] + (verts[2] - verts[1]) * t
                        dy = np.array([0, 0.02 * size, 0])
                        self.add(np.array([b0 - dy, b1 - dy, b1 + dy, b0 + dy]) + nrm * 0.005, c1 * 0.45, label,
                                 nrm, _MAT_ROUGH)
            ref_y = h / 2
        elif kind == "tyre":
            r = size / 2
            rubber = np.array([28.0, 28, 30])
            rim = _jit(rng, [175, 175, 180], 10) if rng.random() < 0.6 else c1
            if rng.random() < 0.5:  # lying flat
                t = r * rng.uniform(0.35, 0.5)
                c, s = _C12
                fp = np.column_stack([xc + r * c, z + r + r * s])
                z_near = float(fp[:, 1].min())
                fp[:, 1] += z - z_near
                faces = _prism(fp, 0.0, t)
                self.mesh.begin(_LAYER_STREET, xc - r, xc + r, z, z + 2 * r, anomaly=idx)
                self.add_faces(faces, rubber, label, _MAT_FLAT, skip_top=True)
                top = faces[-1][0]
                hole = _shrink(top, 0.55)
                self.add([top, hole], rubber * 1.3, label, np.array([0, 1.0, 0]), _MAT_FLAT)
                size3 = (2 * r, t, 2 * r)
                ref_y = t
            else:  # standing, facing the camera (squashed when turned)
                t = r * rng.uniform(0.4, 0.6)
                rx = r * max(0.45, abs(math.cos(yaw)))
                self.mesh.begin(_LAYER_STREET, xc - rx, xc + rx, z, z + t, anomaly=idx)
                self.add(_ellipse_z(z + t, xc, r, rx, r, 24), rubber * 0.9, label, None, _MAT_FLAT)
                front = np.array([0.0, 0.0, -1.0])
                self.add(_ellipse_z(z, xc, r, rx, r, 24), rubber, label, front, _MAT_FLAT)
                self.add(_ellipse_z(z - 0.01, xc, r, rx * 0.55, r * 0.55, 24), rim, label, front, _MAT_CAR)
                self.add(_ellipse_z(z - 0.02, xc, r, rx * 0.2, r * 0.2, 12), rim * 0.6, label, front, _MAT_CAR)
                size3 = (2 * rx, 2 * r, t)
                ref_y = r
                fp = np.array([[xc - rx, z], [xc + rx, z], [xc + rx, z + t], [xc - rx, z + t]])
            pattern = "solid"
        elif kind == "animal":
            L = size
            hgt = L * rng.uniform(0.6, 0.95)
            body_c = _ANIMAL_COLOURS[rng.integers(0, len(_ANIMAL_COLOURS))]
            c1 = _jit(rng, body_c, 10)
            c2 = _jit(rng, _ANIMAL_COLOURS[rng.integers(0, len(_ANIMAL_COLOURS))], 10)
            pattern = "spots" if rng.random() < 0.35 else "solid"
            facing = 1.0 if rng.random() < 0.5 else -1.0
            along = abs(math.cos(yaw))  # how side-on we see it
            bl = L * max(0.35, along)  # apparent body length
            leg_top = hgt * 0.55
            body_h = hgt * 0.35
            self.mesh.begin(_LAYER_STREET, xc - bl / 2 - 0.2 * L, xc + bl / 2 + 0.2 * L, z, z + 0.3, anomaly=idx)
            lw = L * 0.05
            legs_x = [xc - bl * 0.35, xc + bl * 0.35]
            for i, lx in enumerate(legs_x):  # far legs, darker
                self.add(_rect_z(z + 0.02, lx - lw + 0.03 * L, lx + lw + 0.03 * L, 0.0, leg_top + 0.02),
                         c1 * 0.7, label, None, mat, patterned=False)
            tail = [[xc - facing * bl * 0.48, leg_top + body_h * 0.8], [xc - facing * bl * 0.5, leg_top + body_h],
                    [xc - facing * (bl * 0.62), leg_top + body_h * 0.2], [xc - facing * (bl * 0.58), leg_top]]
            self.add(_poly_z(z + 0.01, tail), c1 * 0.8, label, None, mat)
            self.add(_ellipse_z(z, xc, leg_top + body_h / 2, bl / 2, body_h / 2 + 0.02 * L, 16), c1, label, None,
                     mat, patterned=True)
            for lx in legs_x:
                self.add(_rect_z(z - 0.01, lx - lw, lx + lw, 0.0, leg_top + 0.02), c1 * 0.9, label, None, mat)
            hx = xc + facing * bl * 0.5
            neck = [[hx - facing * 0.12 * L, leg_top + body_h * 0.5], [hx + facing * 0.02 * L, leg_top + body_h * 0.4],
                    [hx + facing * 0.12 * L, hgt - 0.02 * L], [hx + facing * 0.02 * L, hgt]]
            self.add(_poly_z(z - 0.005, neck), c1, label, None, mat)
            head_x = hx + facing * 0.12 * L
            self.add(_ellipse_z(z - 0.02, head_x, hgt - 0.06 * L, 0.13 * L, 0.08 * L, 12), c1 * 0.95, label, None,
                     mat)
            ear = [[head_x - facing * 0.06 * L, hgt - 0.02 * L], [head_x - facing * 0.01 * L, hgt + 0.08 * L],
                   [head_x + facing * 0.02 * L, hgt - 0.02 * L]]
            self.add(_poly_z(z - 0.025, ear), c1 * 0.7, label, None, mat)
            spots = np.column_stack([rng.uniform(-bl / 2, bl / 2, 6), rng.uniform(-body_h / 2, body_h / 2, 6),
                                     rng.uniform(0.06, 0.14, 6) * L])
            size3 = (bl + 0.3 * L, hgt + 0.08 * L, 0.3)
            fp = np.array([[xc - bl / 2, z], [xc + bl / 2, z], [xc + bl / 2, z + 0.3 * L], [xc - bl / 2, z + 0.3 * L]])
            ref_y = leg_top + body_h / 2
        else:  # debris / rock: convex prism or frustum over a random convex footprint
            k = int(rng.integers(6, 10))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = size / 2 * rng.uniform(0.6, 1.0, k)
            squash = rng.uniform(0.4, 1.0) if kind == "debris" else rng.uniform(0.6, 1.0)
            pts = np.column_stack([rad * np.cos(ang), rad * np.sin(ang) * squash])
            c, s = math.cos(yaw), math.sin(yaw)
            pts = pts @ np.array([[c, s], [-s, c]])
            fp = _convex_hull_xz(pts)
            fp[:, 0] += xc
            fp[:, 1] += z - fp[:, 1].min()
            if kind == "debris":
                h = size * rng.uniform(0.06, 0.3)
                faces = _prism(fp, 0.0, h)
                if rng.random() < 0.3:
                    c1 = _jit(rng, [185, 190, 195], 15)  # scrap metal
                    mat = _MAT_CAR
            else:
                h = size * rng.uniform(0.35, 0.7)
                faces = _prism(fp, 0.0, h, top_scale=rng.uniform(0.3, 0.6),
                               top_shift=(rng.uniform(-0.1, 0.1) * size, rng.uniform(-0.1, 0.1) * size))
                c1 = _jit(rng, [[170, 150, 120], [150, 110, 90], [200, 185, 150], [130, 125, 140]][rng.integers(0, 4)],
                          12)
                c2 = c1 * 0.65
                pattern = "spots" if rng.random() < 0.6 else "solid"
                mat = _MAT_ROUGH
                spots = np.column_stack([rng.uniform(-size / 2, size / 2, 8), rng.uniform(0, h, 8) - h / 2,
                                         rng.uniform(0.04, 0.12, 8) * size])
            self.mesh.begin(_LAYER_STREET, float(fp[:, 0].min()), float(fp[:, 0].max()), z, float(fp[:, 1].max()),
                            anomaly=idx)
            self.add_faces(faces, c1, label, mat, patterned=True)
            size3 = (float(np.ptp(fp[:, 0])), h, float(np.ptp(fp[:, 1])))
            ref_y = h / 2
        if kind in ("box", "crate", "debris", "rock") or (kind == "tyre" and size3[1] < size3[0] * 0.6):
            x_center = float((fp[:, 0].min() + fp[:, 0].max()) / 2)
        else:
            x_center = float(xc)
        if pattern == "spots" and len(spots) == 0:
            spots = np.column_stack([rng.uniform(-size / 2, size / 2, 7), rng.uniform(-size / 3, size / 3, 7),
                                     rng.uniform(0.05, 0.12, 7) * size])
        self.anomalies.append(_AnomalyInfo(kind=kind, x_center=x_center, z_near=float(z), size=size3,
                                           pattern=pattern, c1=np.asarray(c1, float), c2=np.asarray(c2, float),
                                           period=size * rng.uniform(0.12, 0.3), angle=rng.uniform(0, math.pi),
                                           spots=spots, ref_y=ref_y))
        height = size3[1]
        self.cast_shadow(fp, height, self.shadow_strength * 0.95)
        self.contact_shadow(fp, 0.45)
        self.occupied.append((float(fp[:, 0].min()) - 0.3, float(fp[:, 0].max()) + 0.3, z - 1.0,
                              float(fp[:, 1].max()) + 1.0))

    # ---- ego bonnet -----------------------------------------------------------------------------------------
    def _hood(self) -> None:
        rng, cfg = self.rng, self.cfg
        self.hood = None
        if rng.random() >= cfg.ego_hood_prob:
            return
        h, w = cfg.height, cfg.width
        hh = rng.uniform(0.05, 0.1) * h
        mask = np.zeros((h, w), np.uint8)
        ry = hh * rng.uniform(4.0, 7.0)
        centre = (int(round((w - 1) / 2 + rng.uniform(-0.03, 0.03) * w)), int(round(h - hh + ry)))
        cv2.ellipse(mask, centre, (int(w * rng.uniform(0.65, 0.9)), int(ry)), 0.0, 0.0, 360.0, 1, -1)
        self.hood = mask.astype(bool)
        self.hood_rgb = _CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS))]
        self._hood_img: np.ndarray | None = None

    def hood_image(self) -> tuple[int, np.ndarray]:
        """(first row, RGB float32 image of the bonnet rows from there on; valid where ``self.hood``)."""
        if self._hood_img is None:
            h, w = self.hood.shape
            top = int(np.argmax(self.hood.any(axis=1))) if self.hood.any() else h
            self.hood_top = top
            yy = np.arange(top, h, dtype=np.float32)[:, None]
            grad = np.clip((yy - top) / max(1.0, h - top), 0, 1)
            refl = self.sky_horizon.astype(np.float32) * 0.35 + self.hood_rgb.astype(np.float32) * 0.5
            xx = np.abs(np.arange(w, dtype=np.float32) - w / 2) / (w / 2)
            shine = 1.0 + 0.25 * np.exp(-((grad - 0.15) ** 2) / 0.01) * (1 - xx[None, :])
            img = refl[None, None, :] * ((1.0 - 0.5 * grad) * shine)[:, :, None]
            self._hood_img = np.ascontiguousarray(img * self.gain, np.float32)
        return self.hood_top, self._hood_img


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------
def _ground_start_row(cam: Camera) -> int:
    """First image row strictly below the horizon (rows above it show sky)."""
    return int(min(cam.image_height, max(0, math.floor(cam.horizon_row) + 1)))


def _render_background(world: _World, cam: Camera, ego_z: float, ground_mul: np.ndarray | None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Sky and ground, per pixel (the ground anchored in world coordinates, so it moves coherently during a
    drive).  ``ground_mul``: brightness factor of the ground rows (shadows, illumination).  Returns (float32
    RGB with the camera gain applied, uint8 labels)."""
    gain = world.gain.astype(np.float32)
    h, w = cam.image_height, cam.image_width
    img = np.empty((h, w, 3), np.float32)
    lab = np.empty((h, w), np.uint8)
    vh = cam.horizon_row
    r0 = _ground_start_row(cam)
    # --- sky gradient and clouds (smooth: rendered at 1/4 resolution, then upsampled)
    if r0 > 0:
        lh, lw_ = max(2, (r0 + 3) // 4), max(2, (w + 3) // 4)
        rows = (np.arange(lh, dtype=np.float32) + 0.5) * (r0 / lh) - 0.5
        t = np.clip((rows - (vh - 1.2 * h)) / (1.2 * h), 0.0, 1.0) ** 1.6
        sky = ((world.sky_zenith[None, :] * (1 - t[:, None]) + world.sky_horizon[None, :] * t[:, None]) * gain
               ).astype(np.float32)
        small = np.repeat(sky[:, None, :], lw_, axis=1)
        if world.cloud_cover > 0.05:
            lo = cv2.resize(world.cloud_field, (lw_, max(2, (h + 3) // 4)), interpolation=cv2.INTER_CUBIC)[:lh]
            alpha = np.clip((lo - (1.2 - world.cloud_cover * 1.4)) * 0.8, 0.0, 0.85)
            alpha *= np.clip((vh - rows) / (0.3 * h) + 0.3, 0.0, 1.0)[:, None].astype(np.float32)
            small += alpha[:, :, None] * (np.array([235, 237, 240], np.float32) * gain - sky)[:, None, :]
        img[:r0] = cv2.resize(small, (w, r0), interpolation=cv2.INTER_LINEAR)
        lab[:r0] = SKY
    if r0 >= h:
        return img, lab
    # --- ground geometry: on image row r the ground point under column c is X = t[r] * dx[c], Z = Z[r], so
    # every lateral band / marking is one column interval per row: painted with +1/-1 marks and a cumsum.
    c, s = math.cos(cam.pitch), math.sin(cam.pitch)
    vrows = np.arange(r0, h, dtype=np.float64)
    dy = (vrows - cam.cy) / cam.fy
    denom = np.maximum(dy * c + s, 1e-6)
    tt = np.minimum(cam.height / denom, 4000.0)
    Z = np.minimum(tt * (c - dy * s), 4000.0)
    R = len(Z)
    dx = (np.arange(w) - cam.cx) / cam.fx
    Zw = Z + ego_z
    rows_all = np.arange(R)

    def cols(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """First column with X >= x on each row (x: (len(rows), K))."""
        return np.searchsorted(dx, x / tt[rows, None])

    def paint(marks: np.ndarray, rows: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> None:
        """Add lateral intervals [x0, x1) (arrays (K,) or (len(rows), K)) on ``rows`` to ``marks``."""
        if len(rows) == 0 or np.size(x0) == 0:
            return
        x0 = np.broadcast_to(x0, (len(rows), np.shape(x0)[-1]))
        x1 = np.broadcast_to(x1, (len(rows), np.shape(x1)[-1]))
        rr = np.broadcast_to(rows[:, None], x0.shape).ravel()
        np.add.at(marks, (rr, cols(x0, rows).ravel()), 1)
        np.add.at(marks, (rr, cols(x1, rows).ravel()), -1)

    def apply(marks: np.ndarray, value: int, r_lo: int = 0) -> None:
        """Set ``band`` to ``value`` inside the painted intervals (rows from ``r_lo`` on)."""
        inside = np.cumsum(marks[r_lo:, :w], axis=1, dtype=np.int16) > 0
        np.putmask(band[r_lo:], inside, value)

    # lateral bands (terrain | sidewalk | kerb | road | kerb | sidewalk | terrain)
    marks = np.zeros((R, w + 1), np.int8)
    ce = np.searchsorted(dx, world.band_edges[None, :] / tt[:, None], side="right")
    np.add.at(marks, (np.broadcast_to(rows_all[:, None], ce.shape).ravel(), ce.ravel()), 1)
    band = np.cumsum(marks[:, :w], axis=1, dtype=np.int8)
    cross = np.zeros(R, bool)
    for za, zb in world.cross:  # cross streets: the whole row is road
        cross |= (Zw >= za) & (Zw < zb)
    if cross.any():
        band[cross] = world.road_band
    main = rows_all[~cross]
    lw = world.lane_w
    n = world.n_lanes
    bx = world.lanes_x0 + lw * np.arange(n + 1)  # lane boundaries
    # tyre tracks: slightly darker bands in each lane
    lanes = world.lanes_x0 + lw * np.arange(n)
    tr0 = np.concatenate([lanes + 0.16 * lw, lanes + 0.70 * lw])
    marks = np.zeros((R, w + 1), np.int16)
    paint(marks, main, tr0, tr0 + 0.14 * lw)
    apply(marks, _BAND_TRACK)
    # paving joints on sidewalks (rows nearer than 30 m)
    near = rows_all[(Z < 30.0) & ~cross]
    if len(near):
        tl = world.tile
        jw = 0.02
        marks = np.zeros((R, w + 1), np.int16)
        zf = (Zw[near] / tl + 0.5) % 1.0
        trans = near[np.abs(zf - 0.5) * tl < jw]
        for side in (-1, 1):
            _road, kerb, walk, _terr = world.edge[side]
            lo, hi = (kerb, walk) if side > 0 else (-walk, -kerb)
            paint(marks, near, np.arange(lo + tl, hi, tl) - jw, np.arange(lo + tl, hi, tl) + jw)
            paint(marks, trans, np.array([lo]), np.array([hi]))
        apply(marks, _BAND_JOINT, int(near[0]))
    # lane markings (labelled road)
    hw = world.mark_w / 2
    dash_rows = main[(Zw[main] % world.dash_period) < world.dash_len]
    centre_k = world.n_oncoming if world.two_way else -99
    dashed = np.array([k for k in range(1, n) if k != centre_k], int)
    white = np.zeros((R, w + 1), np.int16)
    paint(white, dash_rows, bx[dashed] - hw, bx[dashed] + hw)
    if world.edge_lines:
        paint(white, main, bx[[0, n]] - hw, bx[[0, n]] + hw)
    if world.two_way:
        cxl = bx[centre_k]
        if world.centre_double:
            c0 = np.array([cxl - 0.12 - hw * 0.8, cxl + 0.12 - hw * 0.8])
            c1 = c0 + 1.6 * hw
        else:
            c0, c1 = np.array([cxl - hw]), np.array([cxl + hw])
        if world.centre_yellow:
            yellow = np.zeros((R, w + 1), np.int16)
            paint(yellow, main, c0, c1)
            apply(yellow, _BAND_YELLOW)
        else:
            paint(white, main, c0, c1)
    for za, _zb in world.cross:  # zebra crossings and stop lines before intersections
        zr = rows_all[(Zw >= za - 4.5) & (Zw < za - 1.0)]
        st = np.arange(math.floor(world.lanes_x0), world.lanes_x1, 1.0)
        paint(white, zr, np.clip(st, world.lanes_x0, world.lanes_x1),
              np.clip(st + 0.5, world.lanes_x0, world.lanes_x1))
        sr = rows_all[(Zw >= za - 5.3) & (Zw < za - 4.9)]
        paint(white, sr, np.array([world.lanes_x0 + world.n_oncoming * lw]), np.array([world.lanes_x1]))
    apply(white, _BAND_WHITE)
    lab[r0:] = np.take(world.band_label, band)
    base = np.take(world.band_rgb, band, axis=0)
    amp = np.take(world.band_amp, band)
    # --- texture: fine grain (screen space) + world-anchored stains / patches (on a 4x coarser grid)
    _sensor, fine_t, _mid = _noise_tiles(h, w)
    o = world.gtex_off
    oy, ox = int(o[0]) % 64, int(o[1]) % 64
    fine = fine_t[oy + r0:oy + h, ox:ox + w] * np.clip(12.0 / np.maximum(Z, 1e-3), 0.3, 1.0).astype(
        np.float32)[:, None]
    Xs = tt[::4, None] * dx[None, ::4]
    xc_ = (np.floor(Xs * 1.5).astype(np.int64) + o[2]) & (_GROUND_TILE - 1)
    zc_ = (np.floor(Zw[::4] * 1.5).astype(np.int64) + o[3]) & (_GROUND_TILE - 1)
    coarse = cv2.resize(_GROUND_COARSE[zc_[:, None], xc_], (w, R), interpolation=cv2.INTER_LINEAR)
    coarse *= 0.8
    fine += coarse
    fine *= amp
    fine += 1.0
    factor = fine
    if ground_mul is not None:
        factor *= ground_mul
    # --- lighting and haze
    g_shade = world.ambient + (1 - world.ambient) * world.sun[1]
    haze = 1.0 - np.exp(-Z / world.haze_dist)
    factor *= (g_shade * 1.05 * (1.0 - haze)).astype(np.float32)[:, None]
    add = (haze[:, None] * world.haze_colour[None, :]).astype(np.float32) * gain
    img_g = img[r0:]
    np.multiply(base, factor[:, :, None], out=img_g)
    img_g += add[:, None, :]
    return img, lab


def _render(world: _World, ego_z: float, frame_rng: np.random.Generator, timestamp: float = 0.0,
            frame_index: int = 0) -> Scene:
    cfg = world.cfg
    cam = world.camera
    h, w = cam.image_height, cam.image_width
    r0 = _ground_start_row(cam)

    # --- low-frequency illumination variation, shadows on the ground
    small = frame_rng.standard_normal((6, 12)).astype(np.float32)
    illum = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    illum *= 0.06
    illum += 1.0
    ground_mul = illum[r0:].copy()
    if r0 < h and len(world.shadows.L):
        shadow = np.zeros((h, w), np.float32)
        sp = _Projected(world.shadows, cam, ego_z)
        for oi in np.argsort([o.layer for o in world.shadows.objects], kind="stable"):
            o = world.shadows.objects[oi]
            if o.zmax < ego_z or o.zmin > ego_z + cfg.view_distance:
                continue
            for it in range(o.item_start, o.item_end):
                for p in sp.polys(it):
                    cv2.fillPoly(shadow, [p], float(world.shadows.C[it, 0]), cv2.LINE_8, sp.SHIFT)
        ground_mul *= 1.0 - cv2.GaussianBlur(shadow[r0:], (5, 5), 1.2)
    img, lab = _render_background(world, cam, ego_z, ground_mul)

    # --- objects, painter's algorithm: layer, then far to near
    mesh = world.mesh
    proj = _Projected(mesh, cam, ego_z)
    keys = []
    for oi, o in enumerate(mesh.objects):
        if o.zmax < ego_z + 0.3 or o.zmin > ego_z + cfg.view_distance + 40.0:
            continue
        dxn = 0.0 if o.x0 <= 0.0 <= o.x1 else min(abs(o.x0), abs(o.x1))
        dzn = 0.0 if o.z0 <= ego_z <= o.z1 else min(abs(o.z0 - ego_z), abs(o.z1 - ego_z))
        keys.append((o.layer, -math.hypot(dxn, dzn), oi))
    keys.sort()
    pid = np.zeros((h, w), np.int32)
    for _layer, _d, oi in keys:
        o = mesh.objects[oi]
        for it in range(o.item_start, o.item_end):
            polys = proj.polys(it)
            if polys:
                cv2.fillPoly(pid, polys, it + 1, cv2.LINE_8, proj.SHIFT)

    # --- per-item appearance for this frame (aerial perspective by distance)
    n_items = len(mesh.L)
    ox0 = np.array([ob.x0 for ob in mesh.objects])
    ox1 = np.array([ob.x1 for ob in mesh.objects])
    oz = np.array([0.5 * (ob.z0 + ob.z1) for ob in mesh.objects]) - ego_z
    obj_dist = np.hypot(0.5 * (ox0 + ox1), np.maximum(oz, 0.0)) if len(mesh.objects) else np.zeros(0)
    hz = (1.0 - np.exp(-obj_dist / world.haze_dist)).astype(np.float32)[mesh.IO]
    haze_col = world.haze_colour.astype(np.float32)
    col_lut = np.zeros((n_items + 1, 3), np.float32)
    col_lut[1:] = (mesh.C + hz[:, None] * (haze_col - mesh.C)) * world.gain.astype(np.float32)
    lab_lut = np.zeros(n_items + 1, np.uint8)
    lab_lut[1:] = mesh.L
    amp_lut = np.zeros((2, n_items + 1), np.float32)
    amp_lut[:, 1:] = (_MAT_AMPS[mesh.M] * (1.0 - hz[:, None])).T
    an_lut = np.zeros(n_items + 1, np.uint8)
    obj_anom = np.array([ob.anomaly for ob in mesh.objects], np.uint8)
    if n_items:
        an_lut[1:] = obj_anom[mesh.IO]

    mask8 = (pid > 0).view(np.uint8)
    sensor, fine_t, mid_t = _noise_tiles(h, w)
    oy, ox = (int(v) for v in frame_rng.integers(0, 64, 2))
    tex = np.take(amp_lut[0], pid)
    tex *= fine_t[oy:oy + h, ox:ox + w]
    tex += np.take(amp_lut[1], pid) * mid_t[oy:oy + h, ox:ox + w]
    tex += 1.0
    tex *= illum
    obj_rgb = np.take(col_lut, pid, axis=0)
    obj_rgb *= tex[:, :, None]
    img = cv2.copyTo(obj_rgb, mask8, img)
    semantic = cv2.copyTo(np.take(lab_lut, pid), mask8, lab)
    anomaly_obj = np.take(an_lut, pid)

    # --- anomaly surface patterns, obstacles
    obstacles: list[Obstacle] = []
    hood = world.hood
    if world.anomalies:
        obstacles = _anomaly_pass(world, proj, pid, anomaly_obj, img, tex, ego_z, hood)

    # --- the bonnet, blur, sensor noise
    if hood is not None:
        top, himg = world.hood_image()
        img[top:] = cv2.copyTo(himg, hood[top:].view(np.uint8), img[top:])
    if cfg.blur_sigma > 0:
        k = 2 * int(math.ceil(2.0 * cfg.blur_sigma)) + 1
        img = cv2.GaussianBlur(img, (k, k), cfg.blur_sigma)
    if cfg.noise_sigma > 0:
        sy, sx = (int(v) for v in frame_rng.integers(0, 64, 2))
        img += np.float32(cfg.noise_sigma) * sensor[sy:sy + h, sx:sx + w]
    np.clip(img, 0, 255, out=img)
    image = img.astype(np.uint8)

    anomaly = (anomaly_obj > 0).view(np.uint8)
    if hood is not None:
        semantic[hood] = VOID
        anomaly[hood] = VOID
    return Scene(image=image, semantic=semantic, anomaly=anomaly, obstacles=obstacles,
                 camera=cam, ego_z=float(ego_z), timestamp=float(timestamp), frame_index=int(frame_index))


def _anomaly_pass(world: _World, proj: _Projected, pid: np.ndarray, anomaly_obj: np.ndarray, img: np.ndarray,
                  tex: np.ndarray, ego_z: float, hood: np.ndarray | None) -> list[Obstacle]:
    mesh = world.mesh
    cam = world.camera
    h, w = pid.shape
    out = []
    for o in mesh.objects:
        if not o.anomaly or o.zmax < ego_z + 0.3:
            continue
        info = world.anomalies[o.anomaly - 1]
        # full (unoccluded) footprint in the image
        full = np.zeros((h, w), np.uint8)
        drew = False
        for it in range(o.item_start, o.item_end):
            polys = proj.polys(it)
            if polys:
                cv2.fillPoly(full, polys, 1, cv2.LINE_8, proj.SHIFT)
                drew = True
        if not drew:
            continue
        if hood is not None:
            full[hood] = 0
        ys, xs = np.nonzero(full)
        if len(ys) == 0:
            continue
        fy0, fy1, fx0, fx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        vis = anomaly_obj[fy0:fy1, fx0:fx1] == o.anomaly
        if hood is not None:
            vis &= ~hood[fy0:fy1, fx0:fx1]
        area = int(vis.sum())
        if area == 0:
            continue
        # surface pattern in object-anchored screen coordinates
        crop_pid = pid[fy0:fy1, fx0:fx1]
        patt = vis & mesh.PAT[np.maximum(crop_pid - 1, 0)] & (crop_pid > 0)
        dz = max(info.z_near - ego_z, 0.3)
        ppm = cam.fx / dz  # pixels per metre at the object's distance
        if patt.any() and info.pattern != "solid":
            u0, v0 = cam.ground_to_pixel(info.x_center, dz)
            v0 = v0 - info.ref_y * ppm
            vv, uu = np.mgrid[fy0:fy1, fx0:fx1].astype(np.float32)
            lu = (uu - u0) / ppm
            lv = (v0 - vv) / ppm
            if info.pattern == "stripes":
                ca, sa = math.cos(info.angle), math.sin(info.angle)
                sel = ((lu * ca + lv * sa) / info.period) % 1.0 < 0.5
            elif info.pattern == "checker":
                sel = ((np.floor(lu / info.period) + np.floor(lv / info.period)) % 2) == 0
            else:  # spots
                sel = np.zeros(lu.shape, bool)
                for sx, sy, sr in info.spots:
                    sel |= (lu - sx) ** 2 + (lv - sy) ** 2 < sr * sr
            shade = mesh.S[np.maximum(crop_pid - 1, 0)]
            colour = np.where(sel[..., None], info.c2.astype(np.float32), info.c1.astype(np.float32))
            colour = colour * (shade * tex[fy0:fy1, fx0:fx1])[..., None]
            haze = float(1.0 - math.exp(-dz / world.haze_dist))
            colour += haze * (world.haze_colour.astype(np.float32) - colour)
            colour *= world.gain.astype(np.float32)
            region = img[fy0:fy1, fx0:fx1]
            region[patt] = colour[patt]
        vys, vxs = np.nonzero(vis)
        bbox = (int(fx0 + vxs.min()), int(fy0 + vys.min()), int(fx0 + vxs.max() + 1), int(fy0 + vys.max() + 1))
        full_area = int(full[fy0:fy1, fx0:fx1].sum())
        truncated = bool(fx0 == 0 or fy0 == 0 or fx1 == w or fy1 == h)
        if hood is not None and not truncated:
            ring = cv2.dilate(full[fy0:fy1, fx0:fx1], np.ones((3, 3), np.uint8)).astype(bool)
            truncated = bool((ring & hood[fy0:fy1, fx0:fx1]).any())
        out.append(Obstacle(id=int(o.anomaly), kind=info.kind, bbox=bbox, area=area, full_area=full_area,
                            ground_position=(float(info.x_center), float(info.z_near - ego_z)),
                            world_position=(float(info.x_center), float(info.z_near)),
                            size=tuple(float(v) for v in info.size), truncated=truncated))
    out.sort(key=lambda ob: ob.ground_position[1])
    return out


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------
def _as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def generate_scene(seed: int | np.random.Generator, config: SceneConfig | None = None) -> Scene:
    """Render one random street scene.  Same seed (and config) -> identical arrays."""
    cfg = config if config is not None else SceneConfig()
    cfg.validate()
    rng = _as_rng(seed)
    world = _World(cfg, rng, cfg.ego_offset, cfg.ego_offset)
    return _render(world, cfg.ego_offset, np.random.default_rng([world.noise_seed, 0]))


def generate_drive(seed: int | np.random.Generator, num_frames: int, config: SceneConfig | None = None,
                   speed_mps: float = 10.0, fps: float = 10.0) -> Iterator[Scene]:
    """Yield ``num_frames`` frames of a drive: the camera moves forward along the road at ``speed_mps``
    starting at ``config.ego_offset``; all scene content (vehicles included) and the anomalies are static
    in the world, so they approach frame by frame.  Obstacle ids are stable across frames."""
    cfg = config if config is not None else SceneConfig()
    cfg.validate()
    if num_frames < 0:
        raise ValueError("num_frames must be >= 0")
    if fps <= 0 or speed_mps < 0:
        raise ValueError("fps must be > 0 and speed_mps >= 0")
    rng = _as_rng(seed)
    travel = speed_mps * max(num_frames - 1, 0) / fps
    world = _World(cfg, rng, cfg.ego_offset, cfg.ego_offset + travel)
    for i in range(num_frames):
        t = i / fps
        yield _render(world, cfg.ego_offset + speed_mps * t, np.random.default_rng([world.noise_seed, i]),
                      timestamp=t, frame_index=i)
