"""The scene distribution: :class:`SceneConfig` and the anomaly kinds it can ask for."""
from __future__ import annotations

from dataclasses import dataclass

#: Kinds of out-of-distribution objects placed on the road.
ANOMALY_KINDS: tuple[str, ...] = ("box", "crate", "tyre", "animal", "debris", "rock")


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
