"""augment.policies: every transform really changes pixels, the 1.x-name trap cannot occur, seeds work."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from PIL import Image

from augment.policies import POLICY_NAMES, PolicyParams, augment_batch, build_policy, compose_policy, policy_params
from core.errors import ConfigError, DataError

SIZE, CROP = 128, 88
LO = (SIZE - CROP) // 2

EXPECTED_TRANSFORMS = {
    "none": [],
    "reference": ["Affine", "HorizontalFlip", "VerticalFlip"],
    "galaxy": ["Affine", "HorizontalFlip", "VerticalFlip", "RandomBrightnessContrast", "GaussNoise", "GaussianBlur"],
}


@pytest.fixture
def galaxy_images(realsamples: Path) -> np.ndarray:
    """Eight real DECaLS galaxies resized to 128 px uint8, as the input pipeline feeds the policies."""
    files = sorted((realsamples / "gz_decals_zoobot_rings" / "images_256").glob("*.png"))[:8]
    assert len(files) == 8
    imgs = [np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)) for f in files]
    return np.stack(imgs).astype(np.uint8)


@pytest.fixture
def asym_images() -> np.ndarray:
    """Synthetic asymmetric images (off-centre blobs on a noisy sky) used where real pixels are absent."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.empty((6, SIZE, SIZE, 3), np.uint8)
    for i in range(6):
        cx, cy = 50 + 4 * i, 70 - 3 * i
        blob = np.exp(-(((xx - cx) / 14) ** 2 + ((yy - cy) / 7) ** 2)) * 180
        img = blob[..., None] * np.array([1.0, 0.8, 0.6]) + 30 + rng.normal(0, 5, (SIZE, SIZE, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policies_build_and_apply_without_any_warning(name: str, asym_images: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 1.x argument name only warns in albumentations 2: make it fail
        policy = build_policy(name, seed=0)
        out = augment_batch(policy, asym_images, 0)
    assert [type(t).__name__ for t in policy.transforms] == EXPECTED_TRANSFORMS[name]
    assert policy.strict
    assert out.dtype == np.uint8 and out.shape == asym_images.shape


def test_old_albumentations_names_are_refused() -> None:
    """The trap itself: a 1.x name is only a warning, which strict Compose (as built here) turns into an error."""
    with pytest.warns(UserWarning, match="var_limit"):
        noise = A.GaussNoise(var_limit=(10.0, 50.0), p=1.0)
    with pytest.raises(ValueError, match="var_limit"):
        A.Compose([noise], strict=True)


def test_none_is_identity(asym_images: np.ndarray) -> None:
    out = augment_batch(build_policy("none"), asym_images, 123)
    np.testing.assert_array_equal(out, asym_images)
    assert out is not asym_images


def _alone(transform: A.BasicTransform, seed: int) -> A.Compose:
    """The policy's own transform (same parameters), forced to apply."""
    t = copy.deepcopy(transform)
    t.p = 1.0
    return A.Compose([t], strict=True, seed=seed)


def _assert_each_transform_changes(name: str, images: np.ndarray) -> None:
    policy = build_policy(name)
    assert policy.transforms, "policy has no transforms"
    for transform in policy.transforms:
        for seed in range(3):
            aug = _alone(transform, seed)
            for img in images[:4]:
                out = aug(image=img)["image"]
                assert out.dtype == np.uint8 and out.shape == img.shape
                diff = np.abs(out.astype(np.int16) - img.astype(np.int16))
                assert diff.mean() > 0.3, f"{name}/{type(transform).__name__} left the image unchanged"


@pytest.mark.parametrize("name", ["reference", "galaxy"])
def test_every_transform_of_every_policy_changes_pixels(name: str, asym_images: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_each_transform_changes(name, asym_images)


@pytest.mark.parametrize("name", ["reference", "galaxy"])
def test_every_transform_changes_real_galaxy_pixels(name: str, galaxy_images: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_each_transform_changes(name, galaxy_images)


def test_transform_parameters_reach_albumentations() -> None:
    """Each strength lands in the 2.x argument that albumentations really reads."""
    p = policy_params(
        "galaxy",
        rotation_limit=30,
        scale_min=0.85,
        scale_max=1.05,
        shift_limit=0.02,
        noise_std=5.1,
        blur_sigma=1.2,
        brightness_limit=0.15,
        contrast_limit=0.05,
    )
    by_name = {type(t).__name__: t for t in compose_policy(p).transforms}
    aff = by_name["Affine"]
    assert tuple(aff.rotate) == (-30, 30)
    assert tuple(aff.scale["x"]) == (0.85, 1.05) and aff.keep_ratio
    assert tuple(aff.translate_percent["x"]) == (-0.02, 0.02)
    assert np.allclose(by_name["GaussNoise"].std_range, (5.1 / 255 / 2, 5.1 / 255))
    assert np.allclose(by_name["GaussianBlur"].sigma_limit, (0.6, 1.2))
    assert np.allclose(by_name["RandomBrightnessContrast"].brightness_limit, (-0.15, 0.15))
    assert np.allclose(by_name["RandomBrightnessContrast"].contrast_limit, (-0.05, 0.05))


def test_noise_and_blur_have_the_requested_strength() -> None:
    flat = np.full((SIZE, SIZE, 3), 100, np.uint8)
    noise = _alone(
        next(t for t in build_policy("galaxy", noise_std=8.0).transforms if type(t).__name__ == "GaussNoise"), 0
    )
    resid = noise(image=flat)["image"].astype(np.float64) - 100
    assert 3.0 < resid.std() < 8.5  # drawn in [4, 8] counts, before uint8 rounding

    checker = ((np.indices((SIZE, SIZE)).sum(0) % 2) * 200 + 20).astype(np.uint8)
    checker = np.repeat(checker[..., None], 3, axis=2)
    blur = _alone(
        next(t for t in build_policy("galaxy", blur_sigma=1.6).transforms if type(t).__name__ == "GaussianBlur"), 0
    )
    # a 1-pixel checkerboard is all but wiped out by a Gaussian of sigma >= 0.8 px
    assert blur(image=checker)["image"].astype(np.float64).std() < 0.25 * checker.std()


def test_reference_rotation_spans_45_degrees(asym_images: np.ndarray) -> None:
    """Across seeds the reference policy rotates both ways by up to 45 degrees (checked via a marker)."""
    p = policy_params("reference", p_hflip=0.0, p_vflip=0.0, scale_min=1.0, scale_max=1.0)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[60:68, 100:110] = 255  # marker to the right of the centre
    angles = []
    for seed in range(40):
        out = compose_policy(p, seed=seed)(image=img)["image"][..., 0].astype(np.float64)
        ys, xs = np.nonzero(out > 128)
        angles.append(np.degrees(np.arctan2(ys.mean() - 63.5, xs.mean() - 63.5)))
    angles = np.array(angles)
    assert np.abs(angles).max() < 47  # never beyond the 45 degree limit (+ the marker's own 0.7 degrees)
    assert angles.max() > 30 and angles.min() < -30 and np.abs(angles).min() < 10


def test_central_crop_never_sees_fill_up_to_45_degrees() -> None:
    """88 * sqrt(2) = 124.5 < 128: a 45 degree rotation about the centre keeps the crop inside the image."""
    img = np.full((SIZE, SIZE, 3), 120, np.uint8)
    rot45 = A.Compose([A.Affine(rotate=(45, 45), border_mode=0, fill=0, p=1.0)], strict=True, seed=0)
    out = rot45(image=img)["image"]
    assert (out == 0).all(axis=-1).sum() > 1000  # the corners of the full image are filled...
    assert out[LO : LO + CROP, LO : LO + CROP].min() > 100  # ...but not the central crop
    p = policy_params("reference", scale_min=1.0, scale_max=1.0, border="constant", fill=0)
    for seed in range(20):
        out = compose_policy(p, seed=seed)(image=img)["image"]
        assert out[LO : LO + CROP, LO : LO + CROP].min() > 100


def test_default_reflect_border_fills_no_constant_in_crop_even_zoomed_out() -> None:
    img = np.full((SIZE, SIZE, 3), 120, np.uint8)
    for name in ("reference", "galaxy"):
        p = policy_params(name, scale_min=0.8, scale_max=0.8, p_color=0.0, p_noise=0.0)
        assert p.border == "reflect"
        for seed in range(10):
            out = compose_policy(p, seed=seed)(image=img)["image"]
            assert out[LO : LO + CROP, LO : LO + CROP].min() > 100, name


def test_augment_batch_is_reproducible_and_varies(asym_images: np.ndarray) -> None:
    policy = build_policy("galaxy")
    a = augment_batch(policy, asym_images, 7)
    b = augment_batch(build_policy("galaxy"), asym_images, 7)
    c = augment_batch(policy, asym_images, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # each image of a batch gets its own draw: two copies of one image come out different
    twin = augment_batch(policy, np.stack([asym_images[0], asym_images[0]]), 7)
    assert not np.array_equal(twin[0], twin[1])
    # a Generator advances: consecutive batches differ, the same generator seed repeats them
    g1, g2 = np.random.default_rng(1), np.random.default_rng(1)
    first, second = augment_batch(policy, asym_images, g1), augment_batch(policy, asym_images, g1)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, augment_batch(policy, asym_images, g2))


def test_augment_batch_keeps_order_so_labels_stay_aligned(asym_images: np.ndarray) -> None:
    """Images carry distinct brightness; after augmentation image i is still nearest to input i."""
    labels = np.arange(6, dtype=np.uint8)
    imgs = np.stack([np.clip(asym_images[i].astype(np.int16) + 25 * i, 0, 255) for i in range(6)]).astype(np.uint8)
    out = augment_batch(build_policy("galaxy", brightness_limit=0.02, contrast_limit=0.02), imgs, 3)
    means_in = imgs.reshape(6, -1).mean(1)
    means_out = out.reshape(6, -1).mean(1)
    matched = np.abs(means_out[:, None] - means_in[None, :]).argmin(1)
    np.testing.assert_array_equal(labels[matched], labels)


def test_augment_batch_rejects_bad_input(asym_images: np.ndarray) -> None:
    policy = build_policy("reference")
    with pytest.raises(DataError, match="uint8"):
        augment_batch(policy, asym_images.astype(np.float32), 0)
    with pytest.raises(DataError, match="shape"):
        augment_batch(policy, asym_images[0], 0)
    with pytest.raises(ConfigError, match="seed"):
        augment_batch(policy, asym_images, "zero")


@pytest.mark.parametrize(
    "name, strengths, match",
    [
        ("fancy", {}, "unknown augment policy 'fancy'"),
        ("galaxy", {"rotate_limit": 10}, "unknown augment strength.*rotate_limit"),
        ("galaxy", {"var_limit": (10, 50)}, "var_limit"),
        ("galaxy", {"rotation_limit": 270}, "rotation_limit=270"),
        ("galaxy", {"p_noise": 1.5}, "p_noise"),
        ("galaxy", {"noise_std": "3"}, "noise_std"),
        ("galaxy", {"scale_min": 1.2, "scale_max": 0.9}, "scale_min"),
        ("galaxy", {"border": "wrap"}, "border"),
        ("galaxy", {"blur_sigma": float("nan")}, "blur_sigma"),
        ("none", {"rotation_limit": 10}, "takes no strengths"),
    ],
)
def test_bad_policy_config_is_one_line_config_error(name, strengths, match) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build_policy(name, **strengths)
    assert "\n" not in str(err.value)


def test_params_are_frozen_and_tunable() -> None:
    p = policy_params("galaxy", noise_std=1.5)
    assert isinstance(p, PolicyParams) and p.noise_std == 1.5 and p.rotation_limit == 180
    with pytest.raises(AttributeError):
        p.noise_std = 2.0  # type: ignore[misc]
    # a zero strength leaves the transform out instead of adding a no-op
    names = [type(t).__name__ for t in build_policy("galaxy", noise_std=0, p_blur=0).transforms]
    assert "GaussNoise" not in names and "GaussianBlur" not in names
