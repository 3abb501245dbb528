"""Public entry points: one random scene, or the frames of a drive through one world."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .config import SceneConfig
from .render import _render
from .scene import Scene
from .world import _World


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
