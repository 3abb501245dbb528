"""The road_default recipe's threshold rule (most obstacles found within the stray budget) and its errors."""
import numpy as np
import pytest

from pebal_training.recipes import road_default


def _frames():
    semantic = np.zeros((8, 8), np.uint8)  # road everywhere
    score = np.linspace(-10.0, 0.0, 64, dtype=np.float32).reshape(8, 8)
    return [(semantic, score, np.zeros((8, 8), np.uint8))]


def test_the_most_found_within_the_stray_budget_is_chosen_refined_between_the_coarse_points(monkeypatch):
    # found and stray both fall as the threshold rises; stray <= 0.3 from t >= -3 on
    def counts(frames, t, meta):
        return {"threshold": t, "found": float(np.clip(-t / 10, 0, 1)), "stray_per_frame": max(0.0, -t / 10 - 0.0)}

    monkeypatch.setattr(road_default, "planner_counts", counts)
    point = road_default.stray_budget_threshold(_frames(), meta=None, budget=0.3)
    assert point["stray_per_frame"] <= 0.3
    swept = [p["threshold"] for p in point["sweep"]]
    within = [t for t in swept if -t / 10 <= 0.3]
    assert point["threshold"] == min(within)  # the lowest threshold within budget finds the most
    assert len(swept) > len(road_default.COARSE_QUANTILES) - 3  # refined between coarse points


def test_no_threshold_within_the_budget_is_an_error(monkeypatch):
    monkeypatch.setattr(road_default, "planner_counts",
                        lambda frames, t, meta: {"threshold": t, "found": 1.0, "stray_per_frame": 5.0})
    with pytest.raises(ValueError, match="no swept threshold"):
        road_default.stray_budget_threshold(_frames(), meta=None)


def test_missing_development_set_is_one_line_and_exit_1(tmp_path, capsys):
    rc = road_default.main(["--checkpoint", str(tmp_path / "x.pt"), "--benchmarks", str(tmp_path),
                            "--output", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fishyscapes_lostandfound_val: not found" in err[0]
