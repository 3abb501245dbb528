"""Smoke test of the benchmark suite (bench/): every module imports and its cheapest piece runs at tiny
sizes, so the suite does not rot. No timing assertions here: speed targets live in the benchmarks."""
from __future__ import annotations

import json
import math

import pytest

from bench import common

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared machine 2 OpenMP threads stall on every op (see BENCHMARKS.md)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_figure(fig: dict) -> None:
    assert isinstance(fig["name"], str) and fig["name"]
    if fig.get("skipped"):
        assert fig["reason"]
        assert "value" not in fig
        return
    assert math.isfinite(fig["value"]) and fig["value"] > 0
    assert isinstance(fig["unit"], str)
    line = common.format_figure(fig)
    assert line.startswith(fig["name"] + ": ")
    json.dumps(fig)  # must be storable


def test_common_helpers():
    calls = []
    samples = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                 warmup=1)
    assert [len(v) for v in samples.values()] == [3, 3]
    assert calls[:2] == ["a", "b"] and calls[2:4] == ["a", "b"] and calls[4:6] == ["b", "a"]  # rotated rounds
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    fig = common.figure("x", 0.5, "s", 1.0, target=1.3)
    assert fig["ratio"] == pytest.approx(2.0) and fig["meets_target"] is True
    rate = common.figure("r", 3.0, "images/s", 2.0, higher_is_better=True, target=1.5)
    assert rate["ratio"] == pytest.approx(1.5) and rate["meets_target"] is True
    assert common.format_figure(common.skipped("y", "why")) == "y: skipped (why)"
    mid = common.machine_id()
    assert mid and all(c.isalnum() or c in "-_." for c in mid)


def test_forward_tiny():
    from bench import bench_forward

    figs = bench_forward.run(quick=True, plan=[("espnetv2", (128, 64), 0, 1)], try_compile=False, verbose=False)
    assert [f["name"] for f in figs] == ["forward_espnetv2_128x64_ours", "forward_espnetv2_128x64_ours_vs_no_grad"]
    for fig in figs:
        _check_figure(fig)
    assert figs[0]["outputs_match"], figs[0]["max_rel_diff"]


def test_runtimes_tiny():
    from bench import bench_backends
    from pebal_perception.core import backends

    figs = bench_backends.run(quick=True, sizes=[(128, 64)], repeats=1, verbose=False)
    names = [f["name"] for f in figs]
    assert names[0] == "runtimes_128x64_ours" and "runtimes_128x64_torch" in names
    for fig in figs:
        _check_figure(fig)
    if backends.compiled_runtimes():
        ours = figs[0]
        assert ours["class_agreement"] >= 0.999 and ours["max_energy_diff"] <= 1e-3
        assert ours["backend"] in ("torch", *backends.compiled_runtimes())
    whole = bench_backends.bench_whole_frame((192, 108), (128, 64), repeats=1, verbose=False)
    assert [f["name"] for f in whole] == ["runtimes_whole_frame_192x108"]
    _check_figure(whole[0])
    if backends.compiled_runtimes():
        assert whole[0]["class_agreement"] >= 0.99 and whole[0]["max_energy_diff"] <= 0.05


def test_precision_tiny(monkeypatch, tmp_path):
    from bench import bench_precision

    missing = bench_precision.run(checkpoint=tmp_path / "none.pth", verbose=False)
    assert [f["name"] for f in missing] == ["precision_fp16", "precision_bf16"] and all(f["skipped"] for f in missing)
    if not bench_precision.CHECKPOINT.is_file():
        pytest.skip("real ESPNetv2 weights not in ../shared/assets")
    monkeypatch.setattr(bench_precision, "NETWORK_HW", (64, 128))  # seconds, not minutes, of half convolutions
    figs = bench_precision.run(precisions=("bf16",), frames=1, verbose=False)
    assert [f["name"] for f in figs] == ["precision_bf16"]
    _check_figure(figs[0])
    assert 90.0 <= figs[0]["value"] <= 100.0 and 0.0 <= figs[0]["obstacle_flips"] <= 1.0


def test_frame_tiny():
    from bench import bench_frame

    figs = bench_frame.run(quick=True, width=128, height=64, warmup=0, repeats=1, verbose=False,
                           large=(192, 108), network=(128, 64))
    assert len(figs) == 4
    for fig in figs:
        _check_figure(fig)
    share = figs[1]
    assert 0.0 < share["value"] < 100.0
    assert set(figs[0]["stages_ms"]) == set(bench_frame.STAGES)
    # figure 2b: a larger frame through the node's path, the network at a smaller size
    assert figs[2]["name"] == "frame_node_path_espnetv2_192x108_to_128x64_total"
    assert set(figs[2]["stages_ms"]) == set(bench_frame.NODE_STAGES)
    assert 0.0 < figs[3]["value"] < 100.0 and figs[3]["io_stages"] == list(bench_frame.LARGE_IO_STAGES)


def test_dds_module_analysis():
    from bench import bench_dds

    diag = {"frames_received": "305", "frames_lost_in_transport": "2", "frames_processed": "40",
            "dropped_frames": "263"}
    stats = bench_dds.analyse(300, diag, [(0.50, 0.49), (0.40, 0.38), (0.60, 0.57)], received_before=5,
                              lost_before=2)
    assert stats["received"] == 300 and stats["lost_in_transport"] == 0
    assert stats["delivered_fraction"] == pytest.approx(1.0)
    assert stats["e2e_s"] == pytest.approx(0.50) and stats["outside_node_s"] == pytest.approx(0.02)
    assert stats["dds_share"] == pytest.approx(0.04)
    figs = bench_dds.figures(stats, 1920, 1080, 30.0, 10.0)
    assert [f["name"] for f in figs] == ["dds_delivery_1920x1080_30hz_best_effort",
                                         "dds_latency_share_1920x1080_30hz_best_effort"]
    for fig in figs:
        _check_figure(fig)
    assert figs[0]["meets_target"] is True and figs[1]["meets_target"] is True
    short = bench_dds.figures(bench_dds.analyse(300, diag, [(0.5, 0.3)]), 1920, 1080, 30.0, 10.0)
    # 2 lost in transport; 40 % of the latency outside the node
    assert short[0]["meets_target"] is False and short[1]["meets_target"] is False
    assert bench_dds.diag_values(type("A", (), {"status": []})()) is None


def test_training_tiny():
    from bench import bench_training

    figs = bench_training.run(quick=True, workers=0, batch_size=1, crop_wh=(64, 32), num_scenes=1, batches=2,
                              step_repeats=1, scene_wh=(128, 64), verbose=False)
    for fig in figs:
        _check_figure(fig)


def test_node_and_metrics_modules_report(monkeypatch):
    from bench import bench_metrics, bench_node

    # The node figure itself starts a ROS node on a 1024x512 model (far too slow for a smoke test):
    # check its prerequisite probe and its DDS isolation only.
    reason = bench_node.prerequisites()
    assert reason is None or reason.startswith("node not available")
    monkeypatch.delenv("PEBAL_BENCH_ROS_DOMAIN_ID", raising=False)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_DOMAIN_ID"):
        monkeypatch.setenv(key, "x")  # restored by monkeypatch after the test
    env = bench_node.local_ros_env()
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and env["ROS_LOCALHOST_ONLY"] == "1"
    assert 0 < int(env["ROS_DOMAIN_ID"]) <= 101
    figs = bench_metrics.run(quick=True, pixels=20_000, verbose=False)
    _check_figure(figs[0])


def test_soak_module_analysis():
    """The soak's verdicts on made-up samples (the soak itself runs in test/test_soak.py: 30 s of a node)."""
    from bench import bench_soak

    reason = bench_soak.prerequisites()
    assert reason is None or reason.startswith("node not available")
    assert bench_soak.warmup_for(30) == 6.0 and bench_soak.warmup_for(600) == 30.0 and bench_soak.warmup_for(5) == 5.0

    def record(leak_kb_per_s: float) -> dict:
        samples = [{"t": float(t), "rss_kb": 600_000 + (30_000 if t % 3 == 0 else 0) + int(leak_kb_per_s * t),
                    "threads": 23, "fds": 18} for t in range(60)]
        counters = {"frames_received": 10, "frames_processed": 7, "dropped_frames": 2, "rejected_total": 0}
        return {"duration_s": 60.0, "warmup_s": 10.0, "samples": samples,
                "results": [[10 + i * 0.2, 150.0 + (i % 7)] for i in range(250)],
                "diagnostics": [{"t": 11.0, **counters}], "player_messages_published": 1200,
                "final": {**counters, "dropped_frames": 3}}

    steady = bench_soak.analyse(record(0.0))
    assert abs(steady["rss_growth_pct"]) < 1.0 and abs(steady["slope_mb_per_min"]) < 5.0
    assert steady["accounting_ok"] and steady["in_flight_end"] == 0 and steady["in_flight_max"] == 1
    assert steady["latency_p95_growth"] == pytest.approx(1.0, abs=0.05)
    assert steady["processed_fps"] == pytest.approx(5.0) and steady["frames_published"] == 600
    leaking = bench_soak.analyse(record(1500.0))  # 1.5 MB/s
    assert leaking["rss_growth_pct"] > 5.0 and leaking["slope_mb_per_min"] == pytest.approx(1500 * 60 / 1024, rel=0.1)
    lost = record(0.0)
    lost["final"]["dropped_frames"] = 1  # a frame neither processed, dropped nor rejected
    lost["final"]["frames_received"] = 12
    assert not bench_soak.analyse(lost)["accounting_ok"]
    for fig in bench_soak.figures({**record(0.0), "analysis": steady, "fps": 10.0, "size": [1024, 512],
                                   "ros_domain_id": "1", "player_samples": []}):
        assert fig["name"].startswith("soak_") and fig["name"].endswith("_60s_1024x512")
        if fig["name"].startswith("soak_rss_growth"):
            json.dumps(fig)
            assert fig["meets_target"] is True
        else:
            _check_figure(fig)


def test_gpu_module_skips_without_cuda_and_its_harness_runs_on_the_cpu():
    """Figure 6 needs a GPU; here: its figures are skipped with the reason when CUDA is absent, and
    the same measuring code runs on the CPU at tiny sizes (fp32 only: autocast fp16 is CUDA's)."""
    import torch

    from bench import bench_gpu

    if not torch.cuda.is_available():
        figs = bench_gpu.run(quick=True, verbose=False)
        assert figs and all(f.get("skipped") and "CUDA" in f["reason"] for f in figs)
    figs = bench_gpu.bench_forward("espnetv2", (64, 32), 0, 1, "cpu", precisions=("fp32",), verbose=False)
    assert [f["name"] for f in figs] == ["gpu_forward_espnetv2_64x32_ours_fp32"]
    assert figs[0]["outputs_match"] and figs[0]["unit"] == "fps"
    frame = bench_gpu.bench_frame((64, 32), 0, 1, "cpu", precision="fp32", verbose=False)
    for fig in figs + [frame]:
        _check_figure(fig)
    assert 0.0 <= frame["host_postprocess_share"] <= 1.0
    from pebal_perception.core import backends

    if not backends.installed("tensorrt"):  # on a GPU machine with TensorRT, bench_gpu.py measures it
        trt = bench_gpu.bench_tensorrt("espnetv2", (64, 32), 0, 1, "cpu", verbose=False)
        assert trt["skipped"] and "tensorrt is not installed" in trt["reason"]


def test_runner_lists_every_module(tmp_path, capsys, monkeypatch):
    from bench import bench_node
    from bench import run as bench_run

    monkeypatch.setattr(bench_node, "run", lambda quick: [common.skipped("node_fake", "stubbed in the smoke test")])
    figs, ok, path = bench_run.run_suite(quick=True, only=["node"], results_dir=tmp_path)
    assert ok and path is not None and path.parent == tmp_path
    stored = json.loads(path.read_text())
    assert [f["name"] for f in stored["figures"]] == ["node_fake"]
    assert set(bench_run.MODULES) == {"forward", "frame", "node", "metrics", "training", "soak", "gpu", "dds",
                                      "runtimes", "precision"}
    assert "node_fake: skipped (stubbed in the smoke test)" in capsys.readouterr().out


def test_quality_helpers():
    from bench import bench_quality

    base = bench_quality.parse_row("base")
    assert base.model == "espnetv2" and base.scores == ("energy", "msp", "maxlogit")
    row = bench_quality.parse_row("mine=runs/x.pt@espnetv2:energy,maxlogit")
    assert (row.name, row.checkpoint, row.model, row.scores) == ("mine", "runs/x.pt", "espnetv2",
                                                                 ("energy", "maxlogit"))
    with pytest.raises(Exception, match="scores must be among"):
        bench_quality.parse_row("mine=x.pt:entropy")
    sweep = [{"stray_per_frame": 0.0, "found": 0.1}, {"stray_per_frame": 0.2, "found": 0.3},
             {"stray_per_frame": 0.4, "found": 0.5}, {"stray_per_frame": 1.0, "found": 0.4}]
    assert bench_quality.found_at_stray(sweep, 0.3) == pytest.approx(0.4)  # between the two swept points
    assert bench_quality.found_at_stray(sweep, 2.0) == pytest.approx(0.5)  # the best found so far
    assert bench_quality.found_at_stray([], 0.3) is None


def test_quality_on_two_frames_per_set(tmp_path):
    """bench_quality end to end on two frames of every set (skips without ../shared)."""
    from bench import bench_quality

    if not (bench_quality.SHARED / "benchmarks").is_dir() or not (bench_quality.SHARED / "assets").is_dir():
        pytest.skip("../shared/benchmarks or ../shared/assets absent")
    out = tmp_path / "quality.json"
    assert bench_quality.main(["--model", "base", "--limit", "2", "--sizes", "1024", "--output", str(out),
                               "--plots", str(tmp_path)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"espnetv2-base energy", "espnetv2-base msp", "espnetv2-base maxlogit"}
    energy = rows["espnetv2-base energy"]
    assert 0 <= energy["pixel_1024"]["fs_laf"]["auroc"] <= 1
    assert energy["components"]["fs_laf"]["threshold_chosen_on"] == "fs_static"
    sweep = energy["planner"]["sweep"]
    assert set(sweep) == {"fs_laf", "fs_static", "road_anomaly", "highway_frames", "highway_clip"}
    assert energy["planner"]["operating_points"]["normal rule"]["chosen_on"] == "highway_frames"
    assert (tmp_path / "quality_found_vs_stray_fs_laf.png").is_file()
    assert (tmp_path / "quality_found_vs_false_frames.png").is_file()


def test_levers_quick(tmp_path, capsys):
    """Figure 11's module on three frames: every configuration runs through the detector, ratios printed."""
    from bench import bench_levers

    assert bench_levers.main(["--quick", "--backends", "torch", "--output", str(tmp_path / "levers.json")]) == 0
    out = capsys.readouterr().out
    for config in bench_levers.CONFIGS:
        assert f"| torch (torch) | {config} |" in out
    assert not (tmp_path / "levers.json").exists()  # a quick run is not a result
