"""Named albumentations 2.x augmentation policies for the 128 px uint8 image, before the centre crop.

The input pipeline resizes to 128 px, augments, then centre-crops to 88 px. A rotation about the
centre keeps the central 88 px inside the source image up to 45 degrees (88 * sqrt(2) = 124.5 < 128),
and the reflecting border covers the rest (zoom-out, shifts, full rotations), so no constant fill ever
shows in the crop.

albumentations 2 accepts the old 1.x argument names with only a warning and then ignores them, so
every policy is built with ``strict=True`` (an unknown argument raises) and only 2.x names are used:
``Affine(rotate, scale, translate_percent, border_mode)``, ``GaussNoise(std_range)`` (a fraction of
255), ``GaussianBlur(sigma_limit, blur_limit=0)``, ``RandomBrightnessContrast``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import albumentations as A
import cv2
import numpy as np

from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

POLICY_NAMES: tuple[str, ...] = ("none", "reference", "galaxy")

_BORDERS: dict[str, int] = {
    "reflect": cv2.BORDER_REFLECT_101,
    "nearest": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}


@dataclass(frozen=True)
class PolicyParams:
    """Strengths of one policy; a strength of 0 (or probability 0) leaves that transform out.

    Attributes
    ----------
    rotation_limit : float
        Rotation sampled uniformly in ``[-rotation_limit, rotation_limit]`` degrees (0..180).
    scale_min, scale_max : float
        Zoom factor range (1 = unchanged, < 1 zooms out).
    isotropic_scale : bool
        Same zoom on both axes; ``False`` samples x and y independently like Keras' ``zoom_range``.
    shift_limit : float
        Translation sampled in ``[-shift_limit, shift_limit]`` as a fraction of the image side (0..0.5).
    brightness_limit, contrast_limit : float
        ``RandomBrightnessContrast`` limits (0..1, symmetric).
    noise_std : float
        Largest Gaussian noise standard deviation in uint8 counts (0..255); drawn in
        ``[noise_std / 2, noise_std]``.
    blur_sigma : float
        Largest PSF-like Gaussian blur sigma in pixels; drawn in ``[blur_sigma / 2, blur_sigma]``.
    p_affine, p_hflip, p_vflip, p_color, p_noise, p_blur : float
        Probability of applying each transform.
    border : str
        How the affine transform fills new pixels: ``reflect``, ``nearest`` or ``constant``.
    fill : int
        Fill value for ``border="constant"``.
    """

    rotation_limit: float = 0.0
    scale_min: float = 1.0
    scale_max: float = 1.0
    isotropic_scale: bool = True
    shift_limit: float = 0.0
    brightness_limit: float = 0.0
    contrast_limit: float = 0.0
    noise_std: float = 0.0
    blur_sigma: float = 0.0
    p_affine: float = 1.0
    p_hflip: float = 0.0
    p_vflip: float = 0.0
    p_color: float = 0.0
    p_noise: float = 0.0
    p_blur: float = 0.0
    border: str = "reflect"
    fill: int = 0


#: Defaults per policy name. ``reference`` mirrors the reference project's Keras
#: ``ImageDataGenerator(rotation_range=45, zoom_range=0.2, horizontal_flip=True, vertical_flip=True)``.
POLICY_DEFAULTS: dict[str, PolicyParams] = {
    "none": PolicyParams(p_affine=0.0),
    "reference": PolicyParams(
        rotation_limit=45.0, scale_min=0.8, scale_max=1.2, isotropic_scale=False, p_affine=1.0, p_hflip=0.5, p_vflip=0.5
    ),
    "galaxy": PolicyParams(
        rotation_limit=180.0,
        scale_min=0.9,
        scale_max=1.1,
        shift_limit=0.03,
        brightness_limit=0.1,
        contrast_limit=0.1,
        noise_std=3.0,
        blur_sigma=0.8,
        p_affine=1.0,
        p_hflip=0.5,
        p_vflip=0.5,
        p_color=0.5,
        p_noise=0.3,
        p_blur=0.3,
    ),
}

_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PolicyParams))


def _check_number(name: str, value: Any, lo: float, hi: float) -> None:
    """Raise ConfigError unless ``value`` is a real number in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"augment strength {name}={value!r} is not a number; give a number in [{lo}, {hi}]")
    if not math.isfinite(float(value)) or not lo <= float(value) <= hi:
        raise ConfigError(f"augment strength {name}={value!r} is outside [{lo}, {hi}]; pick a value in that range")


def validate_params(params: PolicyParams) -> PolicyParams:
    """Check every strength of ``params`` and return it; raise ``ConfigError`` naming the bad one."""
    _check_number("rotation_limit", params.rotation_limit, 0.0, 180.0)
    _check_number("scale_min", params.scale_min, 0.1, 10.0)
    _check_number("scale_max", params.scale_max, 0.1, 10.0)
    if params.scale_min > params.scale_max:
        raise ConfigError(
            f"augment strength scale_min={params.scale_min} exceeds scale_max={params.scale_max}; "
            "make scale_min <= scale_max"
        )
    _check_number("shift_limit", params.shift_limit, 0.0, 0.5)
    _check_number("brightness_limit", params.brightness_limit, 0.0, 1.0)
    _check_number("contrast_limit", params.contrast_limit, 0.0, 1.0)
    _check_number("noise_std", params.noise_std, 0.0, 255.0)
    _check_number("blur_sigma", params.blur_sigma, 0.0, 20.0)
    for name in ("p_affine", "p_hflip", "p_vflip", "p_color", "p_noise", "p_blur"):
        _check_number(name, getattr(params, name), 0.0, 1.0)
    if not isinstance(params.isotropic_scale, bool):
        raise ConfigError(f"augment strength isotropic_scale={params.isotropic_scale!r} is not true/false")
    if params.border not in _BORDERS:
        raise ConfigError(f"augment border={params.border!r} is unknown; use one of: {', '.join(_BORDERS)}")
    _check_number("fill", params.fill, 0, 255)
    return params


def policy_params(name: str, **strengths: Any) -> PolicyParams:
    """Return the validated strengths of policy ``name`` with ``strengths`` overriding its defaults."""
    if not isinstance(name, str) or name not in POLICY_DEFAULTS:
        raise ConfigError(f"unknown augment policy {name!r}; use one of: {', '.join(POLICY_NAMES)}")
    unknown = sorted(set(strengths) - set(_FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown augment strength(s) {', '.join(unknown)}; use any of: {', '.join(_FIELD_NAMES)}")
    if name == "none" and strengths:
        raise ConfigError(
            f"augment policy 'none' takes no strengths (got {', '.join(sorted(strengths))}); "
            "remove them or pick policy 'reference' or 'galaxy'"
        )
    return validate_params(replace(POLICY_DEFAULTS[name], **strengths))


def policy_transforms(params: PolicyParams) -> list[A.BasicTransform]:
    """Return the albumentations transforms of ``params``, leaving out those with no effect."""
    validate_params(params)
    out: list[A.BasicTransform] = []
    geometric = (
        params.rotation_limit > 0 or params.shift_limit > 0 or (params.scale_min, params.scale_max) != (1.0, 1.0)
    )
    if geometric and params.p_affine > 0:
        scale = (float(params.scale_min), float(params.scale_max))
        out.append(
            A.Affine(
                rotate=(-float(params.rotation_limit), float(params.rotation_limit)),
                scale=scale if params.isotropic_scale else {"x": scale, "y": scale},
                keep_ratio=params.isotropic_scale,
                translate_percent=(-float(params.shift_limit), float(params.shift_limit)),
                interpolation=cv2.INTER_LINEAR,
                border_mode=_BORDERS[params.border],
                fill=int(params.fill),
                p=float(params.p_affine),
            )
        )
    if params.p_hflip > 0:
        out.append(A.HorizontalFlip(p=float(params.p_hflip)))
    if params.p_vflip > 0:
        out.append(A.VerticalFlip(p=float(params.p_vflip)))
    if (params.brightness_limit > 0 or params.contrast_limit > 0) and params.p_color > 0:
        out.append(
            A.RandomBrightnessContrast(
                brightness_limit=(-float(params.brightness_limit), float(params.brightness_limit)),
                contrast_limit=(-float(params.contrast_limit), float(params.contrast_limit)),
                p=float(params.p_color),
            )
        )
    if params.noise_std > 0 and params.p_noise > 0:
        std = float(params.noise_std) / 255.0  # GaussNoise takes std as a fraction of the max value
        out.append(
            A.GaussNoise(std_range=(std / 2, std), mean_range=(0.0, 0.0), per_channel=True, p=float(params.p_noise))
        )
    if params.blur_sigma > 0 and params.p_blur > 0:
        sigma = float(params.blur_sigma)
        out.append(A.GaussianBlur(sigma_limit=(sigma / 2, sigma), blur_limit=0, p=float(params.p_blur)))
    return out


def compose_policy(params: PolicyParams, *, seed: int | None = None) -> A.Compose:
    """Build a strict ``A.Compose`` from ``params``, reproducible when ``seed`` is given."""
    return A.Compose(policy_transforms(params), strict=True, seed=seed)


def build_policy(name: str, *, seed: int | None = None, **strengths: Any) -> A.Compose:
    """Build the named policy (``none``, ``reference``, ``galaxy``) with optional strength overrides.

    Raises
    ------
    ConfigError
        For an unknown policy name, unknown strength or out-of-range value.
    """
    return compose_policy(policy_params(name, **strengths), seed=seed)


def _check_images(images: Any) -> np.ndarray:
    """Return ``images`` as a uint8 (N, H, W, 3) array or raise ``DataError``."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(
            f"augment_batch needs uint8 images of shape (N, H, W, 3), got {arr.dtype} {arr.shape}; "
            "pass the resized uint8 batch before the crop"
        )
    return arr


def augment_batch(policy: A.Compose, images: np.ndarray, rng_or_seed: int | np.random.Generator) -> np.ndarray:
    """Augment every image of a uint8 (N, H, W, 3) batch independently; same order, dtype and shape.

    A private copy of ``policy`` is seeded from ``rng_or_seed`` so the result depends only on the
    seed (not on other threads using the same policy, e.g. parallel ``tf.numpy_function`` calls).
    """
    arr = _check_images(images)
    if isinstance(rng_or_seed, np.random.Generator):
        rng = rng_or_seed
    elif isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool):
        rng = np.random.default_rng(int(rng_or_seed))
    else:
        raise ConfigError(f"augment_batch seed {rng_or_seed!r} is not an int or numpy Generator; pass one")
    out = np.empty_like(arr)
    if not policy.transforms:
        out[...] = arr
        return out
    local = copy.deepcopy(policy)
    local.set_random_seed(int(rng.integers(0, 2**32 - 1)))
    for i in range(len(arr)):
        result = local(image=arr[i])["image"]
        if result.shape != arr.shape[1:] or result.dtype != np.uint8:
            raise ConfigError(
                f"augment policy changed the image from uint8 {arr.shape[1:]} to {result.dtype} "
                f"{result.shape}; use only size-preserving uint8 transforms"
            )
        out[i] = result
    return out
