"""Where the Fast DDS profile for large images is, and how our processes apply it.

Camera-sized raw images (1-25 MB) do not cross Fast DDS's default transports intact when the publisher is
best effort: the writer's shared-memory segment is too small and UDP fragments are lost. The profile
``config/fastdds_large_images.xml`` gives every participant that loads it a large shared-memory segment
and a UDPv4 transport restricted to 127.0.0.1 by the profile itself. It must be loaded by the publisher
(camera driver, bag player) as well as by the node: ``export FASTDDS_DEFAULT_PROFILES_FILE=<path>``.

A user's own ``FASTDDS_DEFAULT_PROFILES_FILE`` is always left as it is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

PROFILE_NAME = "fastdds_large_images.xml"
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
_SOURCE_CONFIG = Path(__file__).resolve().parents[1] / "config"


def find_profile() -> Path | None:
    """The profile of this checkout (``config/``) or of the installed package
    (``share/pebal_perception/config/``), or None when neither exists."""
    candidates = [_SOURCE_CONFIG / PROFILE_NAME]
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory("pebal_perception")) / "config" / PROFILE_NAME)
        except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH (env.sh not sourced)
            pass
    except ImportError:  # no ROS: only the checkout's copy
        pass
    return next((p for p in candidates if p.is_file()), None)


def apply_default_profile(env: MutableMapping[str, str] | None = None) -> str | None:
    """Sets ``FASTDDS_DEFAULT_PROFILES_FILE`` in ``env`` (default: this process's environment, before
    rclpy is initialised) to our profile unless it is already set. Returns the profile in effect (the
    user's or ours), or None when there is none."""
    env = os.environ if env is None else env
    if env.get(PROFILE_VARIABLE):
        return env[PROFILE_VARIABLE]
    profile = find_profile()
    if profile is None:
        return None
    env[PROFILE_VARIABLE] = str(profile)
    return str(profile)
