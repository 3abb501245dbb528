"""pebal-calibrate: the threshold reaches the target rate minimally, is stored, and is used by default."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pebal_perception.core.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from pebal_perception.core.engine import InferenceEngine
from pebal_training.cli import calibrate
from pebal_training.data import synthetic_layouts as SL
from pebal_training.data.datasets import FishyscapesDataset

from tiny_models import TINY, TinySegNet

SIZE = (96, 48)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    SL.write_fishyscapes(root, "Static", n=4, seed=7, size=SIZE)
    return root


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(1)
    return save_checkpoint(tmp_path / "tiny.pt", TinySegNet(), ModelMeta.for_architecture(TINY))


def pooled(engine, root):
    pos, neg = [], []
    for sample in FishyscapesDataset(root, "Static"):
        score = engine.infer_one(sample["image"]).score
        pos.append(score[sample["label"] == 1])
        neg.append(score[sample["label"] == 0])
    return np.concatenate(pos), np.concatenate(neg)


def rate(scores, thr):
    return float((scores > np.float32(thr)).mean())


def test_target_tpr_is_reached_minimally_and_stored(checkpoint, data_root, capsys):
    rc = calibrate.main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_static", "--root",
                         str(data_root), "--target-tpr", "0.9", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    _, meta = load_checkpoint(checkpoint)
    thr = meta.threshold
    info = meta.threshold_info
    assert info["target"] == {"tpr": 0.9} and info["dataset"] == "fishyscapes_static"
    assert info["num_images"] == 4 and info["date"] and info["input_size"] == [32, 64]

    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu")  # the deployed default
    assert engine.threshold == thr
    pos, neg = pooled(engine, data_root)
    tpr = rate(pos, thr)
    assert tpr >= 0.9 and tpr == pytest.approx(info["achieved_tpr"], abs=0)
    assert rate(neg, thr) == pytest.approx(info["achieved_fpr"], abs=0)
    # minimal: the next representable (float32) threshold above misses the target
    above = np.nextafter(np.float32(thr), np.float32(np.inf))
    assert rate(pos, above) < 0.9
    # the engine's obstacle mask uses that threshold
    sample = next(iter(FishyscapesDataset(data_root, "Static")))
    res = engine.infer_one(sample["image"])
    assert np.array_equal(res.obstacle, res.score > np.float32(thr))


def test_target_fpr(checkpoint, data_root):
    assert calibrate.main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_static", "--root",
                           str(data_root), "--target-fpr", "0.05", "--quiet"]) == 0
    _, meta = load_checkpoint(checkpoint)
    pos, neg = pooled(InferenceEngine.from_checkpoint(checkpoint, device="cpu"), data_root)
    assert rate(neg, meta.threshold) <= 0.05
    below = np.nextafter(np.float32(meta.threshold), np.float32(-np.inf))
    assert rate(neg, below) > 0.05  # the lowest threshold within the budget
    assert meta.threshold_info["target"] == {"fpr": 0.05}


def test_tie_and_rounding_rules():
    pos = np.array([1, 2, 2, 2, 3], np.float32)
    thr = calibrate.threshold_for_tpr(pos, 0.5)  # k = 3 -> v = 2, every tie detected
    assert thr < 2 and np.float32(thr) == np.nextafter(np.float32(2), np.float32(-np.inf))
    assert (pos > np.float32(thr)).mean() == 0.8
    hundred = np.arange(100, dtype=np.float32)
    assert (hundred > np.float32(calibrate.threshold_for_tpr(hundred, 0.95))).sum() == 95  # not 96
    assert calibrate.threshold_for_tpr(hundred, 0.0) == 99.0
    neg = np.arange(100, dtype=np.float32)
    thr = calibrate.threshold_for_fpr(neg, 0.05, lowest=-1.0)
    assert thr == 94.0 and (neg > thr).sum() == 5
    assert calibrate.threshold_for_fpr(neg, 1.0, lowest=-1.0) < -1.0


def test_third_party_checkpoint_needs_output(tmp_path, data_root, capsys):
    torch.manual_seed(2)
    bare = tmp_path / "bare.pth"
    torch.save(TinySegNet().state_dict(), bare)
    args = ["--checkpoint", str(bare), "--model", TINY, "--dataset", "fishyscapes_static", "--root",
            str(data_root), "--quiet"]
    assert calibrate.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--output-checkpoint" in err
    out = tmp_path / "calibrated.pt"
    assert calibrate.main(args + ["--output-checkpoint", str(out)]) == 0
    model, meta = load_checkpoint(out)
    assert meta.architecture == TINY and meta.source == "bare.pth" and math.isfinite(meta.threshold)
    assert meta.threshold_info["target"] == {"tpr": 0.95}
    ref = torch.load(bare, weights_only=True)
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())
    assert InferenceEngine.from_checkpoint(out, device="cpu").threshold == meta.threshold


def test_errors_are_one_line_exit_2(tmp_path, checkpoint, capsys):
    base = ["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_static"]
    assert calibrate.main(base + ["--root", str(tmp_path / "missing")]) == 2
    assert calibrate.main(base + ["--root", ".", "--target-tpr", "1.5"]) == 2
    assert calibrate.main(base + ["--root", ".", "--target-tpr", "0.9", "--target-fpr", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("pebal-calibrate: error: ") for line in err)
    assert str(tmp_path / "missing") in err[0]


# ------------------------------------------------------------------------------------ --normal
@pytest.fixture(scope="module")
def normal_folder(tmp_path_factory):
    """Six frames of a synthetic drive with no anomaly on the road (image folder input)."""
    import cv2

    from pebal_training.data.synthetic import SceneConfig, generate_scene

    folder = tmp_path_factory.mktemp("normal")
    config = SceneConfig(height=48, width=96, anomaly_count_range=(0, 0))
    for i in range(6):
        scene = generate_scene(100 + i, config)
        cv2.imwrite(str(folder / f"frame_{i:02d}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return folder


def test_normal_driving_calibration_meets_the_rate_and_records_provenance(road_checkpoint, normal_folder, capsys):
    from pebal_perception.core.postprocess import process_frame
    from pebal_perception.core.postprocess_config import PostProcessConfig
    from pebal_perception.core.postprocess_config import calibrated_postprocess

    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(normal_folder),
                           "--max-false-frames", "0.2", "--quiet"]) == 0
    assert "normal frames report an obstacle" in capsys.readouterr().out
    _, meta = load_checkpoint(road_checkpoint)
    normal = meta.threshold_info["normal_driving"]
    assert normal["num_frames"] == 6 and normal["max_false_frames"] == 0.2
    assert normal["inputs"] == [str(normal_folder)] and normal["date"]
    assert normal["postprocess"]["threshold"] == meta.threshold
    assert calibrated_postprocess(meta) == normal["postprocess"]
    assert (road_checkpoint.parent / "tiny_false_frames.png").is_file()
    # Re-running the post-processing at the stored threshold: at most floor(0.2 * 6) = 1 frame reports.
    engine = InferenceEngine(*load_checkpoint(road_checkpoint), device="cpu")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in normal["postprocess"].items()}
    config = PostProcessConfig(**fields)
    import cv2

    reporting = 0
    for path in sorted(normal_folder.glob("*.png")):
        res = engine.infer_one(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        reporting += bool(process_frame(res.semantic, res.score, config).obstacles)
    assert reporting <= 1
    assert normal["achieved_false_frames"] == pytest.approx(reporting / 6)


def test_normal_driving_plot_replaces_only_its_own_file(road_checkpoint, normal_folder, tmp_path, capsys):
    plot = road_checkpoint.parent / "tiny_false_frames.png"
    args = ["--checkpoint", str(road_checkpoint), "--normal", str(normal_folder), "--max-false-frames", "0.2",
            "--quiet"]
    assert calibrate.main(args) == 0 and plot.is_file()
    assert calibrate.main(args) == 0  # the file it wrote itself is replaced
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a user's picture")
    before = road_checkpoint.read_bytes()
    assert calibrate.main(args + ["--plot", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pebal-calibrate: error: ") and str(mine) in err[-1]
    assert mine.read_bytes() == b"a user's picture" and road_checkpoint.read_bytes() == before  # before any work
    assert calibrate.main(args + ["--plot", str(tmp_path / "elsewhere.png")]) == 0
    assert (tmp_path / "elsewhere.png").is_file()


def test_normal_driving_needs_inputs_that_exist(road_checkpoint, tmp_path, capsys):
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(tmp_path / "none")]) == 2
    assert calibrate.main(["--checkpoint", str(road_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("pebal-calibrate: error: ") for line in err)
    assert str(tmp_path / "none") in err[0]


def test_normal_driving_with_a_dataset_shows_what_the_threshold_still_finds(road_checkpoint, normal_folder, data_root,
                                                                           capsys):
    """--normal with --dataset: the share of the dataset's labelled obstacles found at the calibrated threshold
    is printed, stored and plotted beside the false-frame rate (the trade-off, not a silent choice)."""
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(normal_folder), "--dataset",
                           "fishyscapes_static", "--root", str(data_root), "--target-tpr", "0.95",
                           "--max-false-frames", "0.2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "labelled obstacles of fishyscapes_static are found" in out
    _, meta = load_checkpoint(road_checkpoint)
    found = meta.threshold_info["normal_driving"]["obstacles_found"]
    assert found["dataset"] == "fishyscapes_static" and found["objects"] > 0 and 0.0 <= found["found"] <= 1.0
    assert (road_checkpoint.parent / "tiny_false_frames.png").is_file()


# ------------------------------------------------------------------------ --normal: what is calibrated on
def road_seeing_checkpoint(path, scale: float = 1.0):
    """A tiny network with hand-set weights that calls dark, grey (unsaturated) pixels road and everything
    else sidewalk: it sees the road of the synthetic scenes, and none in a black or a white frame.
    ``scale`` multiplies the classifier (1e16: finite but absurd scores)."""
    net = TinySegNet()
    meta = ModelMeta.for_architecture(TINY)
    mean, std = np.asarray(meta.mean), np.asarray(meta.std)
    third = [1 / 3] * 3
    # Features of the raw colour in [0, 1], each relu(a . rgb + b): |r - g| and |g - b| in halves, the
    # brightness above 0.08 and above 0.45, and a constant.
    features = [([1, -1, 0], 0.0), ([-1, 1, 0], 0.0), ([0, 1, -1], 0.0), ([0, -1, 1], 0.0),
                (third, -0.08), (third, -0.45), ([0, 0, 0], 1.0), ([0, 0, 0], 0.0)]
    conv, bn, classifier = net.body[0], net.body[1], net.classifier
    with torch.no_grad():
        conv.weight.zero_()
        for k, (a, b) in enumerate(features):
            a = np.asarray(a, np.float64)
            conv.weight[k, :, 1, 1] = torch.tensor(a * std, dtype=torch.float32)  # undoes the normalisation
            bn.bias[k] = float(b + (a * mean).sum())
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        classifier.weight.zero_()
        classifier.bias.zero_()
        classifier.weight[0, :, 0, 0] = torch.tensor([-60, -60, -60, -60, 40, -100, 0, 0], dtype=torch.float32)
        classifier.weight[1, 6, 0, 0] = 1.0
        classifier.weight *= scale
    return save_checkpoint(path, net, meta)


@pytest.fixture
def road_checkpoint(tmp_path):
    return road_seeing_checkpoint(tmp_path / "tiny.pt")


def synthetic_frames(n: int, size=(48, 96), seed: int = 100) -> list[np.ndarray]:
    from pebal_training.data.synthetic import SceneConfig, generate_scene

    config = SceneConfig(height=size[0], width=size[1], anomaly_count_range=(0, 0))
    return [generate_scene(seed + i, config).image for i in range(n)]


def write_folder(folder, frames) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def write_video(path, value: int, frames: int = 20, size=(96, 48)) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for _ in range(frames):
        writer.write(np.full((size[1], size[0], 3), value, np.uint8))
    writer.release()
    return path


def test_the_road_seeing_test_network_sees_road_where_there_is_some(road_checkpoint):
    from pebal_perception.core.road import road_region

    engine = InferenceEngine(*load_checkpoint(road_checkpoint), device="cpu")
    for rgb in synthetic_frames(3):
        assert road_region(engine.infer_one(rgb).semantic).mean() > 0.3
    for value in (0, 255):
        assert not road_region(engine.infer_one(np.full((48, 96, 3), value, np.uint8)).semantic).any()


@pytest.mark.parametrize("value", [0, 255], ids=["black", "white"])
def test_normal_footage_without_road_is_refused(road_checkpoint, tmp_path, capsys, value):
    """A black or a white video has no road: nothing to calibrate on. Before, it stored threshold -1e6 and a
    polygon over the bottom of the frame, with exit 0."""
    video = write_video(tmp_path / "blank.avi", value)
    before = road_checkpoint.read_bytes()
    rc = calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(video), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1, err
    assert len(err) == 1 and err[0].startswith("pebal-calibrate: error: ")
    assert str(video) in err[0] and "road" in err[0] and "0 of 20 frames" in err[0]
    assert road_checkpoint.read_bytes() == before
    assert not (tmp_path / "tiny_false_frames.png").exists()


def test_normal_calibration_counts_and_stores_the_usable_frames(road_checkpoint, tmp_path, capsys):
    """Frames without road (here two black ones among six of a drive) are left out and counted."""
    folder = write_folder(tmp_path / "drive", synthetic_frames(6) + [np.zeros((48, 96, 3), np.uint8)] * 2)
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(folder),
                           "--max-false-frames", "0.2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "road seen in 6 of 8 frames" in out
    _, meta = load_checkpoint(road_checkpoint)
    normal = meta.threshold_info["normal_driving"]
    assert normal["num_frames"] == 8 and normal["usable_frames"] == 6
    assert normal["usable_per_input"] == {str(folder): 6}
    assert -1e6 < meta.threshold < 1e6


def test_a_drive_mostly_without_road_is_refused(road_checkpoint, tmp_path, capsys):
    folder = write_folder(tmp_path / "night", synthetic_frames(2) + [np.zeros((48, 96, 3), np.uint8)] * 6)
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(folder), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and "2 of 8 frames" in err[0]


def test_ego_mask_of_a_uniform_view_is_none():
    """A featureless view is the same in every frame everywhere: before, the whole bottom band of the
    frame became the ego vehicle."""
    from pebal_training.normal_calibration import ego_polygon, estimate_ego_mask

    semantics = [np.ones((48, 96), np.uint8)] * 5
    scores = [np.full((48, 96), -3.0, np.float32)] * 5
    assert estimate_ego_mask(semantics, scores) is None
    assert ego_polygon(semantics, scores) == ()


@pytest.mark.parametrize("width", [96, 640], ids=["native", "scaled-statistics"])
def test_ego_mask_finds_a_hood_below_a_changing_road(width):
    from pebal_training.normal_calibration import estimate_ego_mask

    rng = np.random.default_rng(0)
    semantics, scores = [], []
    for _ in range(6):
        semantic = rng.choice([0, 2, 8, 10, 13], size=(48, width)).astype(np.uint8)
        semantic[24:] = 0
        semantic[40:] = 13  # the hood: the same class in every frame, a steady score
        score = rng.normal(-5.0, 2.0, (48, width)).astype(np.float32)
        score[40:] = -6.0
        semantics.append(semantic)
        scores.append(score)
    mask = estimate_ego_mask(semantics, scores)
    assert mask is not None and mask.shape == (48, width)
    assert mask[42:].all() and not mask[:38].any()


def test_threshold_for_rate_never_returns_a_silent_fallback():
    """Frames that never report do not bound the threshold from below: before, -1e6 came back (every
    pixel of every later frame above it)."""
    from pebal_training.normal_calibration import TOLERANCE, threshold_for_rate

    never = [-math.inf] * 5
    with pytest.raises(ValueError, match="no frame"):
        threshold_for_rate(never, 0.05)
    assert threshold_for_rate(never, 0.05, fallback=-2.5) == -2.5
    # At most m = 1 of 4 may report and only one ever does: it may report, so its clean threshold, and
    # not below the fallback (the road's own scores).
    assert threshold_for_rate([-50.0, -math.inf, -math.inf, -math.inf], 0.25) == -50.0
    assert threshold_for_rate([-50.0, -40.0, -math.inf, -math.inf], 0.5) == -50.0  # m = 2: both may
    assert threshold_for_rate([-50.0, -math.inf, -math.inf, -math.inf], 0.25, fallback=-2.5) == -2.5
    # Constrained by the frames: the (m + 1)-th largest clean threshold, fallback or not.
    assert threshold_for_rate([1.0, 2.0, 3.0, 4.0], 0.25, fallback=10.0) == 3.0 + TOLERANCE


# ------------------------------------------------------------------------ --normal: bags, one topic
IMAGE_TOPIC = "/camera/image_raw"


def write_bag(path, topics: dict[str, list[np.ndarray]]) -> Path:
    pytest.importorskip("rosbags")
    from pebal_perception.core.bag import AtomicBagWriter, image_msg
    from pebal_perception.core.image_conversion import rgb_to_image_fields

    with AtomicBagWriter(path) as writer:
        for topic, frames in topics.items():
            writer.add_topic(topic, "sensor_msgs/msg/Image")
            for i, frame in enumerate(frames):
                encoding = "rgb8" if frame.ndim == 3 else "mono8"
                stamp = (i + 1) * 100_000_000
                writer.write_msg(topic, stamp, image_msg(rgb_to_image_fields(frame, encoding), stamp))
    return path


@pytest.fixture(scope="module")
def drive_frames():
    return synthetic_frames(3)


def test_normal_bag_reads_the_camera_topic_only(road_checkpoint, tmp_path, drive_frames, capsys):
    """A drive bag also carries ground-truth and debug images: before, every image topic was pooled
    (9 "normal frames" from 3 camera frames)."""
    bag = write_bag(tmp_path / "drive", {IMAGE_TOPIC: drive_frames,
                                         "/ground_truth/anomaly": [np.zeros((48, 96), np.uint8)] * 3,
                                         "/debug/overlay": drive_frames})
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(bag), "--quiet"]) == 0, \
        capsys.readouterr().err
    normal = load_checkpoint(road_checkpoint)[1].threshold_info["normal_driving"]
    assert normal["num_frames"] == 3 and normal["frames_per_input"] == {f"{bag}:{IMAGE_TOPIC}": 3}
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(bag), "--topic",
                           "/debug/overlay", "--quiet"]) == 0
    normal = load_checkpoint(road_checkpoint)[1].threshold_info["normal_driving"]
    assert normal["frames_per_input"] == {f"{bag}:/debug/overlay": 3}


def test_normal_bag_with_one_image_topic_elsewhere_uses_it(road_checkpoint, tmp_path, drive_frames):
    bag = write_bag(tmp_path / "front", {"/front/image": drive_frames})
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(bag), "--quiet"]) == 0
    normal = load_checkpoint(road_checkpoint)[1].threshold_info["normal_driving"]
    assert normal["frames_per_input"] == {f"{bag}:/front/image": 3}


def test_normal_bag_topic_must_be_clear_and_present(road_checkpoint, tmp_path, drive_frames, capsys, monkeypatch):
    bag = write_bag(tmp_path / "two", {"/left/image": drive_frames, "/right/image": drive_frames})
    monkeypatch.setattr(calibrate, "_load_model", lambda args: pytest.fail("loaded the model"))
    base = ["--checkpoint", str(road_checkpoint), "--normal", str(bag), "--quiet"]
    assert calibrate.main(base) == 2
    assert calibrate.main(base + ["--topic", "/camera/image_raw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("pebal-calibrate: error: ") for line in err)
    assert "/left/image" in err[0] and "/right/image" in err[0] and "--topic" in err[0]
    assert "/camera/image_raw" in err[1] and "/left/image" in err[1] and str(bag) in err[1]


# ------------------------------------------------------------------------ --normal: memory, huge scores
class TrackedMap(np.ndarray):
    """A map the engine returned, as an array that can be referred to weakly (to see when it is freed)."""


def test_normal_calibration_keeps_no_frames(road_checkpoint, tmp_path, monkeypatch):
    """Before, the semantic and score maps of every frame were kept until the end (about 32 MB per 1080p
    frame; 600 frames were killed at 5 GB). Each map the engine returns is followed with a weak reference:
    while the next frame is scored, at most those of the previous one (still named by the loop) remain."""
    import weakref

    from pebal_perception.core import inference as inference_module  # where the detector's inference calls it

    score_frame = inference_module.infer_maps
    alive: list = []
    most_alive = []

    def followed(engine, rgb, smoothing=None):
        semantic, score, ms = score_frame(engine, rgb, smoothing)
        alive[:] = [ref for ref in alive if ref() is not None]
        most_alive.append(len(alive))
        maps = semantic.view(TrackedMap), score.view(TrackedMap)
        alive.extend(weakref.ref(m) for m in maps)
        return (*maps, ms)

    monkeypatch.setattr(inference_module, "infer_maps", followed)
    folder = write_folder(tmp_path / "long", synthetic_frames(3) * 10)
    assert calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(folder), "--max-false-frames",
                           "0.2", "--quiet"]) == 0
    assert load_checkpoint(road_checkpoint)[1].threshold_info["normal_driving"]["num_frames"] == 30
    assert len(most_alive) >= 30 and max(most_alive) <= 2, most_alive


class CountedCalls:
    """Wraps process_frame: counts the calls and fails once there are more than ``limit``, so that a
    search that never ends fails instead of hanging."""

    def __init__(self, limit: int):
        from pebal_perception.core import postprocess

        self.limit, self.calls, self.real = limit, 0, postprocess.process_frame

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.limit:
            raise AssertionError(f"more than {self.limit} process_frame calls")
        return self.real(*args, **kwargs)


def test_clean_threshold_search_is_bounded_on_huge_scores(monkeypatch):
    """Before, the scan stepped t down by 0.25, which stops changing t near 1e16: it never ended."""
    from pebal_perception.core.postprocess_config import planner_config
    from pebal_training import normal_calibration as nc

    counted = CountedCalls(3000)
    monkeypatch.setattr(nc, "process_frame", counted)
    semantic = np.zeros((48, 96), np.uint8)
    rng = np.random.default_rng(0)
    for scale in (1e16, -1e16):
        score = (scale * (1.0 + rng.random((48, 96)))).astype(np.float32)
        value = nc.clean_threshold(semantic, score, planner_config(0.0))
        assert value == -math.inf or -1e6 <= value <= 1e6
    assert counted.calls <= 2 * (nc.MAX_SCAN_POINTS + nc.MAX_BISECTION_STEPS)


def test_highest_true_search_is_bounded_and_exact_on_a_wide_range():
    """Scores spread over [0, 1e5] are valid thresholds, but 400 000 steps of 0.25: the scan goes over the
    scores that occur instead, in a bounded number of tests, and the bisection still finds the edge."""
    from pebal_training import normal_calibration as nc

    scores = np.linspace(0.0, 1e5, 5000)
    calls = []

    def reports(t: float) -> bool:
        calls.append(t)
        if len(calls) > 5000:
            raise AssertionError("unbounded search")
        return t <= 61_234.5

    found = nc.highest_threshold(reports, 0.0, 1e5, scores)
    assert found == pytest.approx(61_234.5, abs=nc.TOLERANCE)
    assert len(calls) <= nc.MAX_SCAN_POINTS + nc.MAX_BISECTION_STEPS + 1


def test_normal_calibration_refuses_scores_beyond_the_threshold_range(tmp_path, capsys, monkeypatch):
    """A checkpoint whose classifier is scaled by 1e16 loads; before, calibrating it never ended. Now the
    search ends and the threshold it would need, outside what can be configured, is refused."""
    from pebal_training import normal_calibration as nc

    counted = CountedCalls(20_000)
    monkeypatch.setattr(nc, "process_frame", counted)
    huge = road_seeing_checkpoint(tmp_path / "huge.pt", scale=1e16)
    folder = write_folder(tmp_path / "drive", synthetic_frames(4))
    before = huge.read_bytes()
    assert calibrate.main(["--checkpoint", str(huge), "--normal", str(folder), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pebal-calibrate: error: ") and "1e+06" in err[0]
    assert huge.read_bytes() == before


# ------------------------------------------------------------------------ output places
def png_bytes(width: int, height: int, texts: dict[str, str], after_data: dict[str, str] | None = None) -> bytes:
    """A PNG stream with the given header size and text chunks but no real image data (never decodable)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def text(entries):
        return b"".join(chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")) for k, v in entries.items())

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text(texts) + chunk(b"IDAT", b"\x78\x9c\x03\x00")
            + text(after_data or {}) + chunk(b"IEND", b""))


def test_plot_check_reads_the_text_chunks_only(tmp_path, monkeypatch):
    """Before, an existing PNG was opened with PIL: over 179 MP that raised a traceback, and a 144 MP one
    was decoded whole to read its tag."""
    import PIL.Image

    from pebal_perception.core.io import OutputPathError

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("decoded the image"))
    ours = tmp_path / "ours.png"
    ours.write_bytes(png_bytes(12_000, 12_000, {"Title": "x", "Software": "pebal-calibrate"}))
    assert calibrate.check_plot_path(ours) == ours
    refused = {
        "big.png": png_bytes(15_000, 12_000, {"Software": "someone else"}),
        "late_tag.png": png_bytes(64, 64, {}, after_data={"Software": "pebal-calibrate"}),
        "bad_crc.png": png_bytes(64, 64, {"Software": "pebal-calibrate"}).replace(b"calibrate", b"calibrat3"),
        "truncated.png": png_bytes(64, 64, {"Software": "pebal-calibrate"})[:40],
        "not_a_png.png": b"GIF89a" + b"\0" * 100,
        "empty.png": b"",
    }
    for name, data in refused.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OutputPathError, match=name):
            calibrate.check_plot_path(tmp_path / name)


def test_the_plot_it_writes_carries_its_tag(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    calibrate._save_plot(tmp_path / "plot.png", fig)
    from pebal_training.figures import png_text

    assert png_text(tmp_path / "plot.png", "Software") == "pebal-calibrate"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no file can be created")
@pytest.mark.parametrize("option", ["--output-checkpoint", "--plot"])
def test_an_unwritable_output_place_is_named_before_any_work(road_checkpoint, tmp_path, capsys, monkeypatch,
                                                              option):
    """Before, the work was done and then the error named a temp file beside the output."""
    folder = write_folder(tmp_path / "drive", synthetic_frames(1))
    monkeypatch.setattr(calibrate, "_load_model", lambda args: pytest.fail("loaded the model"))
    target = Path("/proc/pebal-calibrate-test") / ("out.pt" if option == "--output-checkpoint" else "out.png")
    rc = calibrate.main(["--checkpoint", str(road_checkpoint), "--normal", str(folder), option, str(target),
                         "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"pebal-calibrate: error: {target}: ")
    assert ".tmp" not in err[0]
