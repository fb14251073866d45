"""Quality stage, unit level: artifact filter, skin tone (ITA), perceptual hash, fidelity metrics, extractor, config."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from dermt2im_hub.config import ConfigError, load_config
from dermt2im_hub.quality.artifacts import analyze_image, artifact_reasons, lesion_found
from dermt2im_hub.quality.config import ArtifactConfig, FeatureConfig, QualityConfig
from dermt2im_hub.quality.fidelity import frechet_distance, kernel_inception_distance, precision_recall
from dermt2im_hub.quality.images import load_rgb
from dermt2im_hub.quality.phash import hamming_matrix, phash
from dermt2im_hub.quality.skin_tone import ita_category, ita_degrees
from dermt2im_hub.testing.phantoms import SKIN_TONES, PhantomConfig, _render, render_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def sample_folder(shared_data: Path, name: str) -> Path:
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: this test needs the real samples in ../shared/data/{name}")
    return folder


def phantom(index: int, size: int = 256, seed: int = 0) -> np.ndarray:
    return np.asarray(render_phantom(index, ("benign", "malignant")[index % 2], PhantomConfig(size=size, seed=seed)))


def srgb_to_lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """Textbook sRGB (D65) -> CIELAB, written out independently of OpenCV."""
    linear = [((c / 255) / 12.92) if c / 255 <= 0.04045 else (((c / 255) + 0.055) / 1.055) ** 2.4 for c in rgb]
    r, g, b = linear
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


# ---------------------------------------------------------------- skin tone


@pytest.mark.parametrize("colour", [(200, 150, 120), (236, 200, 180), (150, 100, 70), (90, 60, 45)])
def test_ita_of_uniform_patch_matches_formula(colour):
    lightness, _, b_star = srgb_to_lab(colour)
    expected = math.atan((lightness - 50) / b_star) * 180 / math.pi
    patch = np.empty((128, 128, 3), np.uint8)
    patch[:] = colour
    analysis = analyze_image(patch)
    from dermt2im_hub.quality.skin_tone import image_ita

    measured = image_ita(analysis.lab, analysis.skin_mask)
    assert measured == pytest.approx(expected, abs=0.3)
    assert analysis.skin_mask.mean() > 0.9  # no lesion in a uniform patch: all of it is skin


@pytest.mark.parametrize(("ita", "category"), [
    (70, "very_light"), (55.5, "very_light"), (50, "light"), (41.5, "light"), (35, "intermediate"),
    (20, "tan"), (0, "brown"), (-29, "brown"), (-45, "dark"), (None, None),
])
def test_ita_categories(ita, category):
    assert ita_category(ita) == category


def test_ita_of_phantom_skin_follows_its_tone():
    """Phantoms paint skin from a known (L*, b*) plus texture, hair and a vignette: ITA lands near it."""
    for index in range(8):
        image, info = _render(index, ("benign", "malignant")[index % 2], PhantomConfig(size=256, seed=3))
        analysis = analyze_image(np.asarray(image))
        from dermt2im_hub.quality.skin_tone import image_ita

        expected = ita_degrees(*SKIN_TONES[info["skin_tone"]])
        assert image_ita(analysis.lab, analysis.skin_mask) == pytest.approx(expected, abs=7.0), info


# ---------------------------------------------------------------- artifact filter


def _degraded(image: np.ndarray) -> dict[str, np.ndarray]:
    side = image.shape[0]
    skin = np.median(image.reshape(-1, 3), axis=0).astype(np.uint8)
    return {
        "blank": np.broadcast_to(skin, image.shape).copy(),
        "noise": RNG.integers(0, 256, image.shape, dtype=np.uint8),
        "blur": cv2.GaussianBlur(image, (0, 0), 0.03 * side),  # a blur of 3% of the side
        "black": np.zeros_like(image),
        "white": np.full_like(image, 255),
    }


@pytest.mark.parametrize("index", [0, 1, 4, 7])
def test_filter_rejects_blank_noise_and_blur_of_phantoms(index):
    image = phantom(index)
    config = ArtifactConfig()
    assert artifact_reasons(analyze_image(image).scores(), config) == []
    expected = {"blank": "no_lesion", "noise": "noisy", "blur": "blurry", "black": "clipped", "white": "clipped"}
    for kind, degraded in _degraded(image).items():
        reasons = artifact_reasons(analyze_image(degraded).scores(), config)
        assert expected[kind] in reasons, (kind, reasons)


def test_filter_rejects_degraded_real_samples(shared_data):
    folder = sample_folder(shared_data, "dermt2im-sample")
    for path in sorted(folder.glob("*/*.png"))[::40]:
        image = load_rgb(path)
        for kind, degraded in _degraded(image).items():
            assert artifact_reasons(analyze_image(degraded).scores(), ArtifactConfig()), (path.name, kind)


def test_at_least_95_percent_of_real_derm_t2im_samples_pass(shared_data):
    folder = sample_folder(shared_data, "dermt2im-sample")
    paths = sorted(folder.glob("*/*.png"))
    assert len(paths) >= 100
    failures = {p.name: artifact_reasons(analyze_image(load_rgb(p)).scores(), ArtifactConfig()) for p in paths}
    failures = {name: reasons for name, reasons in failures.items() if reasons}
    pass_rate = 1 - len(failures) / len(paths)
    print(f"artifact filter pass rate on {len(paths)} Derm-T2IM samples: {pass_rate:.3f}; failures: {failures}")
    assert pass_rate >= 0.95


def test_lesion_found_on_phantoms_and_not_on_noise():
    config = ArtifactConfig()
    for index in range(6):
        analysis = analyze_image(phantom(index, seed=5))
        assert lesion_found(analysis.scores(), config), index
        assert 0.02 < analysis.lesion.area < 0.6
    noise = analyze_image(RNG.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    assert not lesion_found(noise.scores(), config)


# ---------------------------------------------------------------- perceptual hash


def test_phash_is_stable_under_reencoding_and_separates_distinct_images():
    image = phantom(2)
    _, jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 70])
    variants = [cv2.resize(image, (512, 512)), cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1],
                np.clip(image + RNG.normal(0, 4, image.shape), 0, 255).astype(np.uint8)]
    original = phash(image)[None]
    assert hamming_matrix(original, np.stack([phash(v) for v in variants])).max() <= 8
    others = np.stack([phash(phantom(i, seed=9)) for i in range(8)])
    assert hamming_matrix(original, others).min() >= 40


# ---------------------------------------------------------------- fidelity


@pytest.fixture(scope="module")
def extractor():
    from dermt2im_hub.quality.features import build_extractor

    return build_extractor(FeatureConfig(model="resnet18", image_size=64))


def test_fid_between_halves_of_one_set_is_far_below_real_vs_noise(extractor):
    images = [phantom(i, size=128, seed=11) for i in range(32)]
    noise = [RNG.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(16)]
    first, second = extractor.embed(images[:16]), extractor.embed(images[16:])
    noise_features = extractor.embed(noise)
    same, different = frechet_distance(first, second), frechet_distance(first, noise_features)
    assert same < 0.2 * different, (same, different)
    kid_same, _ = kernel_inception_distance(first, second, subset_size=16, subsets=20)
    kid_different, _ = kernel_inception_distance(first, noise_features, subset_size=16, subsets=20)
    assert kid_same < 0.2 * kid_different


def test_frechet_distance_of_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(2, 1, (4000, 3))
    # equal covariances: FID = |mu_a - mu_b|^2 = 3 * 2^2
    assert frechet_distance(a, b) == pytest.approx(12.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_precision_recall_separate_fidelity_from_coverage():
    rng = np.random.default_rng(2)
    real = rng.normal(0, 1, (300, 4))
    assert min(precision_recall(real, rng.normal(0, 1, (300, 4)))) > 0.8
    collapsed = rng.normal(0, 0.05, (300, 4))  # faithful but covering only the centre of the real set
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.3
    far = rng.normal(8, 1, (300, 4))
    assert precision_recall(real, far) == (0.0, 0.0)


# ---------------------------------------------------------------- feature extractor


def test_extractor_is_deterministic_and_describes_itself(extractor):
    from dermt2im_hub.quality.features import FeatureExtractor, build_extractor

    assert isinstance(extractor, FeatureExtractor)
    again = build_extractor(FeatureConfig(model="resnet18", image_size=64))
    images = [phantom(0, size=96), phantom(1, size=128)]
    np.testing.assert_allclose(extractor.embed(images), again.embed(images), rtol=1e-5, atol=1e-6)
    facts = extractor.describe()
    assert facts["model"] == "resnet18" and facts["weights"] == "random init, seed 0" and facts["dim"] == 512
    assert "random init" in extractor.name


def test_extractor_loads_local_safetensors_and_refuses_pickles(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from dermt2im_hub.quality.features import TimmFeatureExtractor

    torch.manual_seed(7)
    source = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    loaded = TimmFeatureExtractor("resnet18", weights=str(weights), image_size=32)
    assert torch.equal(loaded.model.conv1.weight, source.conv1.weight)
    assert loaded.describe()["weights_sha256"] and "resnet18.safetensors" in loaded.name
    pickle = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), pickle)
    with pytest.raises(ConfigError, match="safetensors"):
        TimmFeatureExtractor("resnet18", weights=str(pickle))


def test_paper_dinov2_extractor_from_a_local_file(tmp_path):
    """paper.yaml's extractor (timm's DINOv2 ViT-S/14) offline: weights saved at their native 518 px, as the
    Hub file is, loaded at the recipe's 224 px (timm resamples the position embeddings); random weights here,
    since the real ones cannot be downloaded on this machine."""
    import timm
    import torch
    from safetensors.torch import save_file

    from dermt2im_hub.quality.features import build_extractor

    recipe = load_config(QualityConfig, REPO_ROOT / "configs" / "paper.yaml", section="quality").features
    torch.manual_seed(3)
    source = timm.create_model(recipe.model, pretrained=False, num_classes=0)
    assert source.pos_embed.shape[1] == 1 + 37 * 37  # 518 px / 14
    weights = tmp_path / "dinov2_vits14.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    recipe.weights, recipe.device = str(weights), "cpu"
    extractor = build_extractor(recipe)
    assert extractor.model.pos_embed.shape[1] == 1 + 16 * 16 and extractor.image_size == 224
    assert torch.equal(extractor.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    embeddings = extractor.embed([phantom(0, size=300), phantom(1, size=200), phantom(0, size=300)])
    assert embeddings.shape == (3, 384) and np.isfinite(embeddings).all()
    np.testing.assert_allclose(embeddings[0], embeddings[2], rtol=1e-5, atol=1e-5)
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-4  # random weights: close, yet not the same
    assert extractor.describe()["weights"] == "file dinov2_vits14.safetensors"


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("recipe", ["paper.yaml", "demo.yaml"])
def test_recipe_quality_sections_load(recipe):
    config = load_config(QualityConfig, REPO_ROOT / "configs" / recipe, section="quality")
    if recipe == "paper.yaml":
        assert config.features.model.startswith("vit_small_patch14_dinov2") and config.features.weights == "hub"
        assert config.artifacts == ArtifactConfig()  # the recipe spells out the tuned defaults
    else:
        # the pretrained tiny base draws lesions: the paper's filter applies, only the sharpness floor is lower
        assert config.features.weights is None and config.artifacts.require_lesion
        paper = ArtifactConfig()
        assert config.artifacts.min_sharpness < paper.min_sharpness
        assert (config.artifacts.max_clipping, config.artifacts.max_noise) == (paper.max_clipping, paper.max_noise)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="min_sharpnes"):
        load_config(QualityConfig, overrides={"artifacts.min_sharpnes": 3})
    with pytest.raises(ConfigError, match="max_lesion_area"):
        load_config(QualityConfig, overrides={"artifacts.min_lesion_area": 0.9, "artifacts.max_lesion_area": 0.5})
    path = Path(tmp_path / "flat.yaml")
    path.write_text("memorization:\n  min_cosine: 0.97\nfeatures:\n  model: resnet34\n")
    config = load_config(QualityConfig, path, section="quality")
    assert config.memorization.min_cosine == 0.97 and config.features.model == "resnet34"


def test_extractor_errors_are_config_errors():
    from dermt2im_hub.quality.features import TimmFeatureExtractor

    with pytest.raises(ConfigError, match="resnet_does_not_exist"):
        TimmFeatureExtractor("resnet_does_not_exist")
    with pytest.raises(ConfigError, match="cannot load pretrained weights"):  # tests run with HF_HUB_OFFLINE=1
        TimmFeatureExtractor("resnet18", weights="hub")


def test_vision_transformer_extractor_takes_the_configured_input_size():
    from dermt2im_hub.quality.features import TimmFeatureExtractor

    vit = TimmFeatureExtractor("vit_tiny_patch16_224", image_size=32)
    assert vit.embed([phantom(0, size=64)]).shape == (1, 192) and vit.describe()["image_size"] == 32
