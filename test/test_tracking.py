"""core.tracking: k-of-n confirmation, hold, association, stable ids, resets, disabled mode."""
from __future__ import annotations

import math

import pytest

from pebal_perception.core.tracking import JUMP_BACK_NS, MAX_TRACK_ID, Detection, ObstacleTracker, Track, TrackingConfig

MS = 1_000_000


def det(x: int, y: int = 100, w: int = 40, h: int = 40, score: float = 1.0, payload=None) -> Detection:
    return Detection(bbox=(x, y, w, h), score=score, payload=payload)


def run(tracker: ObstacleTracker, frames: list[list[Detection]], start: int = 0) -> list[list[Track]]:
    return [tracker.update(dets, (start + i) * 100 * MS) for i, dets in enumerate(frames)]


def ids(reported: list[Track]) -> list[int]:
    return [t.track_id for t in reported]


def test_reported_only_from_the_kth_hit():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=3, confirm_window=5, hold_frames=2))
    out = run(tracker, [[det(10)]] * 4)
    assert [len(o) for o in out] == [0, 0, 1, 1]
    assert out[2][0].hits == 3 and out[2][0].confirmed and out[2][0].reported
    live = tracker.tracks
    assert len(live) == 1 and live[0].track_id == 1


def test_k_of_n_with_gaps_confirms():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=3, confirm_window=5, hold_frames=0))
    a = [det(10)]
    out = run(tracker, [a, [], a, [], a])
    assert [len(o) for o in out] == [0, 0, 0, 0, 1]
    assert out[4][0].track_id == 1 and out[4][0].age_frames == 5 and out[4][0].hits == 3


def test_flicker_two_of_five_is_never_reported():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=3, confirm_window=5))
    a = [det(10)]
    pattern = [a, [], a, [], []] * 6  # every window of 5 consecutive frames holds exactly 2 hits
    out = run(tracker, pattern)
    assert all(o == [] for o in out)
    assert all(not t.confirmed for t in tracker.tracks)


def test_hopeless_tentative_track_is_deleted_and_next_one_gets_a_new_id():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=3, confirm_window=5))
    run(tracker, [[det(10)], [], []])
    assert [t.track_id for t in tracker.tracks] == [1]  # H M M H H would still confirm in time
    run(tracker, [[]], start=3)
    assert tracker.tracks == []  # H M M M: cannot beat a fresh track any more
    out = run(tracker, [[det(10)]] * 3, start=4)
    assert ids(out[2]) == [2]


def test_hold_m_frames_then_dropped_and_held_track_keeps_last_bbox_and_payload():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=2))
    marker = object()
    out = run(tracker, [[det(10, payload="a")], [det(12, payload=marker, score=0.7)], [], [], []])
    assert [len(o) for o in out] == [0, 1, 1, 1, 0]
    for frame, missed in ((2, 1), (3, 2)):
        held = out[frame][0]
        assert held.track_id == 1 and held.missed == missed and held.reported
        assert held.bbox == (12, 100, 40, 40) and held.payload is marker and held.score == 0.7
        assert held.last_seen_ns == 100 * MS
    # Still alive (missed 3 <= max(m, n) = 3) but not reported; one more miss deletes it.
    assert [t.missed for t in tracker.tracks] == [3]
    assert not tracker.tracks[0].reported
    run(tracker, [[]], start=5)
    assert tracker.tracks == []


def test_confirmed_track_back_after_the_hold_keeps_its_id():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=2, confirm_window=4, hold_frames=1))
    a = [det(10)]
    out = run(tracker, [a, a, [], [], [], a])
    assert [ids(o) for o in out] == [[], [1], [1], [], [], [1]]
    assert out[5][0].age_frames == 6 and out[5][0].missed == 0


def test_new_id_after_a_track_dies():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=1, hold_frames=0))
    out = run(tracker, [[det(10)], [], [], [det(10)]])
    assert [ids(o) for o in out] == [[1], [], [], [2]]


def test_stable_id_across_small_shifts():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=1))
    out = run(tracker, [[det(10 + 6 * i, 100 + 2 * i)] for i in range(20)])
    assert all(ids(o) == [1] for o in out[1:])
    assert out[-1][0].bbox == (10 + 6 * 19, 138, 40, 40)


def test_centroid_gate_associates_a_small_box_that_jumped_past_iou():
    config = TrackingConfig(confirm_hits=1, confirm_window=1, hold_frames=0, min_iou=0.5,
                            max_centroid_distance=0.5)
    tracker = ObstacleTracker(config)
    # 40x40 moved by 18 px: IoU 880 / 2320 = 0.38 < 0.5, but centroid distance 18 <= 0.5 * 40.
    out = run(tracker, [[det(10)], [det(28)]])
    assert ids(out[1]) == [1]
    tracker = ObstacleTracker(config)
    out = run(tracker, [[det(10)], [det(31)]])  # IoU 0.31, 21 px > 20 px: a new track
    assert ids(out[1]) == [2]


def test_crossing_objects_do_not_swap_ids():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=1))
    frames = []
    for i in range(25):
        left, right = 0 + 8 * i, 200 - 8 * i  # they overlap around i = 10..15
        frames.append([det(right, 100, payload="R"), det(left, 110, payload="L")])
    out = run(tracker, frames)
    for o in out[1:]:
        assert [(t.track_id, t.payload) for t in o] == [(1, "R"), (2, "L")]


def test_one_detection_per_track_and_vice_versa():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=1, hold_frames=0))
    run(tracker, [[det(10)]])
    out = tracker.update([det(11), det(12)], 100 * MS)
    assert ids(out) == [1, 2]
    assert out[0].bbox[0] == 11  # the higher IoU wins
    assert [t.missed for t in out] == [0, 0]


def test_first_seen_and_age_semantics():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=2, confirm_window=5, hold_frames=2))
    a = [det(10)]
    stamps = [5 * MS, 7 * MS, 7 * MS, 9 * MS]  # equal stamps are allowed
    out = [tracker.update(d, s) for d, s in zip([a, [], a, a], stamps)]
    assert out[0] == [] and out[1] == []
    t = out[2][0]
    assert (t.first_seen_ns, t.last_seen_ns, t.age_frames, t.hits, t.missed) == (5 * MS, 7 * MS, 3, 2, 0)
    t = out[3][0]
    assert (t.first_seen_ns, t.last_seen_ns, t.age_frames, t.hits) == (5 * MS, 9 * MS, 4, 3)


def test_hits_count_only_the_window():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=3, hold_frames=5))
    out = run(tracker, [[det(10)]] * 5 + [[]] * 2)
    assert [o[0].hits for o in out] == [1, 2, 3, 3, 3, 2, 1]


def test_time_jumping_back_resets_and_is_counted():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=2))
    assert ids(run(tracker, [[det(10)]] * 3, start=100)[-1]) == [1]
    out = tracker.update([det(10)], 5 * 100 * MS)  # bag looped: 9.7 s earlier
    assert out == []
    assert [(t.track_id, t.age_frames, t.first_seen_ns) for t in tracker.tracks] == [(2, 1, 500 * MS)]
    assert (tracker.jump_back_resets, tracker.forgotten_on_reset) == (1, 1)
    out = tracker.update([det(10)], 6 * 100 * MS)
    assert ids(out) == [2]  # ids are not reused after a reset


def test_a_small_step_back_in_time_keeps_the_tracks():
    """Out-of-order frames or a clock stepping back (less than JUMP_BACK_NS) are one timeline."""
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=2))
    run(tracker, [[det(10)]] * 3, start=100)
    out = tracker.update([det(10)], 102 * 100 * MS - JUMP_BACK_NS)
    assert ids(out) == [1] and tracker.jump_back_resets == 0


def test_reset_forgets_tracks_keeps_counter():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=1, hold_frames=0))
    run(tracker, [[det(10), det(200)]])
    tracker.reset()
    assert tracker.tracks == []
    assert ids(tracker.update([det(10)], 0)) == [3]


def test_disabled_reports_every_detection_with_fresh_ids():
    tracker = ObstacleTracker(TrackingConfig(enabled=False))
    first = tracker.update([det(10, payload="a"), det(200, payload="b")], 1 * MS)
    second = tracker.update([det(10, payload="c")], 2 * MS)
    assert ids(first) == [1, 2] and ids(second) == [3]
    for t in first + second:
        assert (t.age_frames, t.missed, t.hits, t.confirmed, t.reported) == (1, 0, 1, True, True)
    assert [t.payload for t in first] == ["a", "b"]
    assert second[0].first_seen_ns == second[0].last_seen_ns == 2 * MS
    assert tracker.update([], 3 * MS) == []


def test_single_image_config_reports_immediately_never_holds():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=1, hold_frames=0))
    out = run(tracker, [[det(10)], [], [det(10)]])
    assert [ids(o) for o in out] == [[1], [], [1]]


def test_payload_carried_through_untouched():
    class Thing:
        pass

    thing = Thing()
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=1, hold_frames=0))
    out = tracker.update([Detection(bbox=(1, 2, 3, 4), score=0.5, payload=thing)], 0)
    assert out[0].payload is thing and out[0].bbox == (1, 2, 3, 4) and out[0].score == 0.5


def test_returned_tracks_are_snapshots():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=2, hold_frames=2))
    first = tracker.update([det(10)], 0)
    first[0].bbox = (999, 999, 1, 1)
    second = tracker.update([], 1)
    assert first[0].missed == 0 and second[0].missed == 1 and second[0].bbox == (10, 100, 40, 40)


def test_deterministic_order():
    config = TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=1)
    frames = [[det(300 - 3 * i), det(10 + 2 * i), det(150, 10 + i)] for i in range(6)]
    frames[3] = frames[3][::-1]  # input order does not change ids once tracks exist
    results = []
    for _ in range(2):
        tracker = ObstacleTracker(config)
        out = run(tracker, frames)
        results.append([[(t.track_id, t.bbox) for t in o] for o in out])
        for o in out:
            assert ids(o) == sorted(ids(o))
    assert results[0] == results[1]
    assert [[i for i, _ in o] for o in results[0][1:]] == [[1, 2, 3]] * 5
    assert results[0][-1] == [(1, (285, 100, 40, 40)), (2, (20, 100, 40, 40)), (3, (150, 15, 40, 40))]


def test_ids_wrap_in_uint32_range_and_skip_live_ones():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=1, confirm_window=3, hold_frames=3))
    tracker.update([det(10)], 0)  # id 1 stays alive
    tracker._ids._next = MAX_TRACK_ID
    out = tracker.update([det(10), det(200), det(400)], 1)
    assert ids(out) == [1, 2, MAX_TRACK_ID]
    assert all(0 < i <= MAX_TRACK_ID for i in ids(out))


def test_set_config_applies_at_next_update_and_keeps_tracks():
    tracker = ObstacleTracker(TrackingConfig(confirm_hits=3, confirm_window=5, hold_frames=2))
    run(tracker, [[det(10)]] * 2)
    tracker.set_config(TrackingConfig(confirm_hits=2, confirm_window=2, hold_frames=0))
    assert tracker.config.confirm_window == 5
    out = tracker.update([det(10)], 10 * MS * 100)
    assert ids(out) == [1] and out[0].hits == 2 and out[0].age_frames == 3
    out = tracker.update([], 11 * MS * 100)
    assert out == []  # hold 0 now
    tracker.set_config(TrackingConfig(enabled=False))
    out = tracker.update([det(10)], 12 * MS * 100)
    assert ids(out) == [2] and tracker.tracks == []


@pytest.mark.parametrize("kwargs, field", [
    ({"confirm_hits": 4, "confirm_window": 3}, "confirm_hits"),
    ({"confirm_hits": 0}, "confirm_hits"),
    ({"confirm_window": 0, "confirm_hits": 0}, "confirm_hits"),
    ({"confirm_window": 0, "confirm_hits": 1}, "confirm_window"),
    ({"hold_frames": -1}, "hold_frames"),
    ({"confirm_hits": 2.5}, "confirm_hits"),
    ({"confirm_window": True}, "confirm_window"),
    ({"min_iou": 0.0}, "min_iou"),
    ({"min_iou": 1.5}, "min_iou"),
    ({"min_iou": math.nan}, "min_iou"),
    ({"min_iou": "x"}, "min_iou"),
    ({"max_centroid_distance": -0.1}, "max_centroid_distance"),
    ({"max_centroid_distance": math.nan}, "max_centroid_distance"),
    ({"max_centroid_distance": math.inf}, "max_centroid_distance"),
    ({"enabled": "yes"}, "enabled"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrackingConfig(**kwargs)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="bbox"):
        Detection(bbox=(0, 0, -1, 5), score=1.0)
    with pytest.raises(ValueError, match="bbox"):
        Detection(bbox=(0, 0, 5), score=1.0)
    tracker = ObstacleTracker()
    with pytest.raises(ValueError, match="stamp_ns"):
        tracker.update([], 1.5)
    with pytest.raises(ValueError, match="Detection"):
        tracker.update([(0, 0, 1, 1)], 0)
    with pytest.raises(ValueError, match="TrackingConfig"):
        tracker.set_config({"enabled": False})
