"""Ground appearance model of a world: lateral bands (terrain, sidewalk, kerb, road) and markings, with
their labels, colours and texture amplitudes (rendered per pixel by :mod:`.background`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .label_space import ROAD, SIDEWALK, TERRAIN
from .sampling import _jit
from .textures import _GROUND_TILE

if TYPE_CHECKING:
    from .world import _World

#: Bands after the 9 lateral ones: lane markings, worn tyre tracks, paving joints.
_BAND_WHITE, _BAND_YELLOW, _BAND_TRACK, _BAND_JOINT = 9, 10, 11, 12


def build_ground_model(world: _World) -> None:
    """Colours, labels and texture amplitudes of the ground bands, and the ground texture offsets."""
    rng = world.rng
    asphalt = rng.uniform(70, 105)
    world.road_rgb = np.array([asphalt, asphalt + rng.uniform(-2, 3), asphalt + rng.uniform(0, 6)])
    walk_choice = rng.integers(0, 3)
    walk_rgb = [[150, 148, 145], [175, 165, 150], [150, 110, 100]][walk_choice]
    world.walk_rgb = _jit(rng, walk_rgb, 8)
    world.kerb_rgb = _jit(rng, [185, 183, 178], 8)
    terr = [[95, 115, 60], [120, 125, 75], [135, 120, 90]][rng.integers(0, 3)]
    world.terrain_rgb = _jit(rng, terr, 8)
    world.yard_rgb = _jit(rng, [110, 118, 75], 10)
    world.mark_rgb = _jit(rng, [218, 218, 212], 6)
    world.yellow_rgb = _jit(rng, [215, 175, 50], 6)
    world.tile = rng.choice([0.4, 0.5, 0.6, 1.0])
    world.gtex_off = rng.integers(0, _GROUND_TILE, 4)
    # band edges (X) and their label / colour / texture amplitude
    l_road, l_kerb, l_walk, l_terr = world.edge[-1]
    r_road, r_kerb, r_walk, r_terr = world.edge[1]
    world.band_edges = np.array([-l_terr, -l_walk, -l_kerb, -l_road, r_road, r_kerb, r_walk, r_terr],
                                np.float32)
    # bands 0..8 from left to right; _BAND_WHITE / _BAND_YELLOW: lane markings (labelled road)
    # (+ _BAND_TRACK: worn tyre tracks, _BAND_JOINT: paving joints)
    world.band_label = np.array([TERRAIN, TERRAIN, SIDEWALK, SIDEWALK, ROAD, SIDEWALK, SIDEWALK, TERRAIN,
                                 TERRAIN, ROAD, ROAD, ROAD, SIDEWALK], np.uint8)
    world.band_rgb = np.array([world.yard_rgb, world.terrain_rgb, world.walk_rgb, world.kerb_rgb, world.road_rgb,
                               world.kerb_rgb, world.walk_rgb, world.terrain_rgb, world.yard_rgb, world.mark_rgb,
                               world.yellow_rgb, world.road_rgb * 0.94, world.walk_rgb * 0.8], np.float32)
    world.band_rgb *= world.gain.astype(np.float32)
    world.band_amp = np.array([0.2, 0.2, 0.06, 0.05, 0.07, 0.05, 0.06, 0.2, 0.2, 0.12, 0.12, 0.07, 0.06],
                              np.float32)
    world.road_band = 4
