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

Layout of the package
---------------------
:mod:`.label_space` (trainIds, palette), :mod:`.config` (:class:`SceneConfig`), :mod:`.camera`,
:mod:`.scene` (:class:`Scene`, :class:`Obstacle`); world construction: :mod:`.world` (the coordinator),
:mod:`.ground`, :mod:`.frontage`, :mod:`.street_furniture`, :mod:`.road_users`, :mod:`.anomalies`, on top
of :mod:`.primitives` (geometry), :mod:`.mesh` (polygon soup and projection), :mod:`.textures` and
:mod:`.sampling`; rendering: :mod:`.background` (sky and ground), :mod:`.render` (one frame) and
:mod:`.generate` (:func:`generate_scene`, :func:`generate_drive`).
"""
from __future__ import annotations

from .camera import Camera
from .config import ANOMALY_KINDS, SceneConfig
from .generate import generate_drive, generate_scene
from .label_space import CITYSCAPES_PALETTE, TRAIN_ID_NAMES, VOID, colorize_labels
from .label_space import ROAD  # noqa: F401 - not in __all__, but imported from here
from .scene import Obstacle, Scene

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
