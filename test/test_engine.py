"""The inference engine: device-side pipeline equals the reference computation, at input resolution."""
import numpy as np
import pytest
import torch

from pebal_perception.core import scoring
from pebal_perception.core.checkpoint import ModelMeta
from pebal_perception.core.engine import InferenceEngine, resolve_device
from pebal_perception.core.preprocess import ImageSizeError, network_size, normalize, pil_preprocess

from tiny_models import TINY, TinySegNet


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu")


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_results_are_at_input_resolution_with_documented_types(engine):
    res = engine.infer_one(_image(50, 90))
    assert res.semantic.shape == (50, 90) and res.semantic.dtype == np.uint8 and res.semantic.max() <= 18
    assert res.score.shape == (50, 90) and res.score.dtype == np.float32
    assert res.obstacle.dtype == bool and np.array_equal(res.obstacle, res.score > engine.threshold)


def test_matches_reference_computation_at_network_size(engine):
    img = _image(32, 64, seed=1)
    res = engine.infer_one(img)
    x = pil_preprocess(img, (32, 64), engine.meta.mean, engine.meta.std)
    with torch.no_grad():
        logits = engine.model(x)
    ref = scoring.gaussian_smooth(-torch.logsumexp(logits[:, :19], dim=1))[0].numpy()
    np.testing.assert_allclose(res.score, ref, atol=1e-4)
    assert np.array_equal(res.semantic, logits[0, :19].argmax(0).numpy())


def test_batch_equals_single_frames(engine):
    imgs = [_image(40, 60, seed=s) for s in range(3)]
    batch = engine.infer(imgs)
    for img, b in zip(imgs, batch):
        single = engine.infer_one(img)
        np.testing.assert_allclose(b.score, single.score, atol=1e-5)
        assert np.array_equal(b.semantic, single.semantic)


def test_threshold_override_and_native_size():
    eng = InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY, threshold=-3.0), device="cpu")
    assert eng.threshold == -3.0
    eng2 = InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu", threshold=1.5,
                           input_size="native")
    assert eng2.threshold == 1.5
    assert eng2.infer_one(_image(30, 50)).score.shape == (30, 50)


def test_half_precision_falls_back_to_fp32_on_cpu():
    eng = InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu", precision="fp16")
    assert eng.precision == "fp32"
    with pytest.raises(ValueError):
        InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu", precision="fp8")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_rejects_wrong_images(engine):
    with pytest.raises(ValueError):
        engine.infer(np.zeros((1, 10, 10, 4), np.uint8))
    with pytest.raises(ValueError):
        engine.infer(np.zeros((1, 10, 10, 3), np.float32))


def test_network_size_rules():
    assert network_size((1024, 2048), None, 8) == (1024, 2048)
    assert network_size((100, 130), None, 16) == (96, 128)
    with pytest.raises(ValueError):
        network_size((0, 0), (500, 1000), 16)


@pytest.mark.parametrize("hw", [(1_000_000, 32), (32, 1_000_000), (2_000_000, 32), (64_000_000, 1), (4000, 10)])
def test_thin_images_are_refused_before_anything_is_resized(engine, hw, monkeypatch):
    """A thin side upscaled to the network size in one pass asked for 7.7 GB (2,000,000 x 32) to 245 GB."""
    from pebal_perception.core import preprocess

    def no_resize(*args, **kwargs):
        raise AssertionError("resized although the image should have been refused")

    monkeypatch.setattr(preprocess.F, "interpolate", no_resize)
    image = np.zeros((*hw, 3), np.uint8)  # calloc: the pages are never touched
    with pytest.raises(ImageSizeError, match="aspect ratio"):
        engine.infer(image)
    with pytest.raises(ImageSizeError, match="aspect ratio"):
        engine.check_image(*hw)
    assert issubclass(ImageSizeError, ValueError)


def test_resize_bounds_in_normalize(monkeypatch):
    from pebal_perception.core import preprocess

    mean, std = (0.5,) * 3, (0.25,) * 3
    thin = torch.zeros((1, 3, 20_000, 2), dtype=torch.uint8)
    with pytest.raises(ImageSizeError, match="resize"):  # 20000 x 8192 values in the intermediate
        normalize(thin, mean, std, (512, 8192))
    monkeypatch.setattr(preprocess, "MAX_RESIZE_VALUES", 64 * 64 - 1)
    with pytest.raises(ImageSizeError, match="resize"):
        normalize(torch.zeros((1, 3, 64, 32), dtype=torch.uint8), mean, std, (32, 64))
    monkeypatch.setattr(preprocess, "MAX_RESIZE_VALUES", 64 * 64)
    assert normalize(torch.zeros((1, 3, 64, 32), dtype=torch.uint8), mean, std, (32, 64)).shape == (1, 3, 32, 64)
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageSizeError, match="pixels"):
        normalize(torch.zeros((1, 3, 8, 16), dtype=torch.uint8), mean, std, (8, 16))  # no resize, still bounded


def test_network_sizes_are_bounded():
    from pebal_perception.core.preprocess import MAX_NETWORK_SIDE

    assert MAX_NETWORK_SIDE == 4096
    assert network_size((0, 0), (4096, 4096), 16) == (4096, 4096)
    for size in [(4112, 4096), (100_000, 100_000), (32, 512), (512, 32)]:
        with pytest.raises(ValueError):
            network_size((0, 0), size, 16)
        with pytest.raises(ValueError):
            InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu", input_size=size)
    native = InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu", input_size="native")
    with pytest.raises(ImageSizeError, match="4096"):
        native.check_image(4200, 4200)  # its native network size would be 4200 x 4200
    with pytest.raises(ImageSizeError, match="4096"):
        native.infer(np.zeros((4200, 600, 3), np.uint8))
    native.check_image(4000, 600)


def test_images_over_the_pixel_limit_are_refused(engine):
    from pebal_perception.core.limits import MAX_IMAGE_PIXELS

    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1
    with pytest.raises(ImageSizeError, match="pixels"):
        engine.check_image(side, side)
    engine.check_image(1000, 8000)  # 8:1 is allowed


@pytest.mark.parametrize("threshold", [float("inf"), float("-inf"), float("nan"), 1e300])
def test_unusable_thresholds_are_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu", threshold=threshold)


def test_normalize_equals_pil_reference_without_resize():
    img = _image(16, 16, seed=3)
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    ours = normalize(t, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (16, 16))
    ref = pil_preprocess(img, (16, 16), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_antialiased_resize_is_close_to_pil():
    img = np.asarray(np.random.default_rng(0).integers(0, 256, (64, 128, 3)), dtype=np.uint8)
    img = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(img).permute(2, 0, 1)[None].float(), 3, 1, 1)
                     [0].permute(1, 2, 0).round().byte())  # a smoother image, like a photo
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    ours = normalize(t, (0.5,) * 3, (0.25,) * 3, (32, 64))
    ref = pil_preprocess(img, (32, 64), (0.5,) * 3, (0.25,) * 3)
    assert (ours - ref).abs().max() < 2.0 / 255 / 0.25 + 1e-4  # within ~1 grey level of PIL


@pytest.mark.parametrize("image_hw, size", [((270, 480), (128, 256)), ((32, 64), (64, 128)), ((108, 192), (64, 96))])
def test_uint8_resize_is_within_a_grey_level_of_the_float_resize(image_hw, size):
    """On the CPU a uint8 frame is resized as uint8 (no float copy of the full-size frame): the network
    input differs from the float32 resize by the rounding to whole grey levels, at most one level."""
    img = _image(*image_hw, seed=5)
    nhwc = torch.from_numpy(img)[None]
    t = nhwc.permute(0, 3, 1, 2)  # what to_uint8_batch gives (channels-last memory)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = normalize(t, mean, std, size)
    plain = normalize(t.contiguous(), mean, std, size)  # NCHW memory: same values
    shrinking = image_hw[0] > size[0] or image_hw[1] > size[1]
    x = torch.nn.functional.interpolate(t.float(), size=size, mode="bilinear", align_corners=False,
                                        antialias=shrinking)
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std).view(1, 3, 1, 1) * 255.0
    ref = (x - m) / s
    assert ours.shape == ref.shape == (1, 3, *size) and ours.dtype == torch.float32
    grey_levels = ((ours - ref) * s).abs().max().item()
    assert grey_levels <= 1.0 + 1e-3
    assert torch.equal(ours, plain)
    # the values are whole grey levels (the uint8 resize), normalised
    assert torch.allclose(ours * s + m, (ours * s + m).round(), atol=1e-3)


@pytest.mark.parametrize("arch, size", [("tiny_test_net", (32, 64)), ("espnetv2", (64, 128))])
def test_optimized_path_equals_plain_model(arch, size):
    """BN folding + channels-last must not change results beyond float rounding."""
    from pebal_perception.core.models import create_model

    torch.manual_seed(0)
    model = create_model(arch).eval()
    for m in model.modules():  # non-trivial BN statistics, as in a trained model
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.normal_(1.0, 0.2)
            m.bias.data.normal_(0.0, 0.2)
    meta = ModelMeta.for_architecture(arch, input_size=list(size))
    plain = InferenceEngine(model, meta, device="cpu", optimize=False)
    fast = InferenceEngine(model, meta, device="cpu", optimize=True)
    from pebal_perception.core.optimize import count_batchnorms

    assert count_batchnorms(fast.model) < count_batchnorms(plain.model)
    img = _image(*size, seed=5)
    a, b = plain.infer_one(img), fast.infer_one(img)
    np.testing.assert_allclose(a.score, b.score, atol=1e-4)
    assert (a.semantic == b.semantic).mean() > 0.999
    assert count_batchnorms(model) == count_batchnorms(plain.model)  # the caller's model is untouched
