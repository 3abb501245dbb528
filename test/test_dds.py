"""pebal_perception.dds: which Fast DDS profile our processes load (no ROS process is started here)."""
from __future__ import annotations

from pebal_perception import dds


def test_our_profile_is_applied_when_none_is_set():
    profile = dds.find_profile()
    if profile is None:  # pragma: no cover - the checkout always has config/
        import pytest

        pytest.skip("no profile in this checkout")
    env: dict[str, str] = {}
    assert dds.apply_default_profile(env) == str(profile)
    assert env == {dds.PROFILE_VARIABLE: str(profile)}


def test_a_users_own_profile_is_left_as_it_is():
    env = {dds.PROFILE_VARIABLE: "/etc/vehicle/dds.xml"}
    assert dds.apply_default_profile(env) == "/etc/vehicle/dds.xml"
    assert env == {dds.PROFILE_VARIABLE: "/etc/vehicle/dds.xml"}


def test_no_ament_prefix_still_finds_the_checkouts_profile(monkeypatch):
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    found = dds.find_profile()
    assert found is None or found.name == dds.PROFILE_NAME
