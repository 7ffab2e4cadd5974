"""The galaxy view policy of self-supervised pretraining: two random views of each image, on the fly (TensorFlow).

A galaxy stays the same galaxy under what the sky and the telescope do to it, so two views of one image
should map to the same representation:

- any of the 8 orientations of the dihedral group D4 (a transpose and two flips, drawn per image);
- a small shift and zoom (the centre crop the model sees at inference, its side scaled by ``U(1 - zoom,
  1 + zoom)`` and its centre moved by up to ``shift`` of that side, resized to the crop);
- per-band flux scaling (each of the 3 bands times ``U(1 - flux, 1 + flux)``, per image): colour and depth
  vary between fields;
- PSF-like blur (a Gaussian of a random width up to ``blur`` pixels, mixed in per image);
- sky level (an offset of up to ``sky`` of the full range, per image and band): fields differ in their
  background, and a view policy without it lets the encoder tell images apart by their sky alone;
- sky noise (Gaussian, standard deviation up to ``noise`` of the full range, per image).

Images are float32 0..255 in and out (the models rescale themselves); every operation runs per image
inside the graph, so the views cost no Python per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError


@dataclass(frozen=True)
class ViewPolicy:
    """Strengths of the view policy (see the module docs); 0 turns a transform off."""

    zoom: float = 0.15
    shift: float = 0.08
    flux: float = 0.2
    sky: float = 0.1
    blur: float = 1.0
    noise: float = 0.03

    def __post_init__(self) -> None:
        for name, value, high in (
            ("zoom", self.zoom, 0.75),
            ("shift", self.shift, 0.5),
            ("flux", self.flux, 0.9),
            ("sky", self.sky, 0.5),
            ("blur", self.blur, 5.0),
            ("noise", self.noise, 0.5),
        ):
            if not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise ConfigError(f"view policy {name}={value!r} is out of range; use 0-{high:g} (0 turns it off)")


def _gaussian_kernel(sigma: Any, radius: int) -> Any:
    import tensorflow as tf

    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / tf.maximum(sigma, 1e-3)))
    k = k / tf.reduce_sum(k)
    return k


def make_view_fn(size: int, crop: int, policy: ViewPolicy = ViewPolicy()) -> Any:
    """A function ``views(images) -> views`` for a float32 batch ``(B, size, size, 3)`` (0..255): one random
    view ``(B, crop, crop, 3)`` per image, drawn anew at every call (usable inside ``tf.function``)."""
    import tensorflow as tf

    if not 8 <= crop <= size:
        raise ConfigError(f"pretraining crop {crop} px must lie between 8 and the image size {size}")
    base = crop / size
    radius = max(1, int(round(3 * policy.blur))) if policy.blur > 0 else 0

    def views(images: Any) -> Any:
        x = tf.cast(images, tf.float32)
        b = tf.shape(x)[0]
        # D4: a transpose and two flips, each with probability 1/2, per image (the 8 orientations)
        flip = tf.random.uniform([b, 1, 1, 1]) < 0.5
        x = tf.where(flip, tf.transpose(x, [0, 2, 1, 3]), x)
        x = tf.where(tf.random.uniform([b, 1, 1, 1]) < 0.5, tf.reverse(x, axis=[1]), x)
        x = tf.where(tf.random.uniform([b, 1, 1, 1]) < 0.5, tf.reverse(x, axis=[2]), x)
        # shift and zoom around the inference-time centre crop, kept inside the image
        side = tf.minimum(base * tf.random.uniform([b], 1.0 - policy.zoom, 1.0 + policy.zoom), 1.0)
        room = (1.0 - side) / 2.0
        y0 = room + tf.clip_by_value(tf.random.uniform([b], -1.0, 1.0) * policy.shift * side, -room, room)
        x0 = room + tf.clip_by_value(tf.random.uniform([b], -1.0, 1.0) * policy.shift * side, -room, room)
        boxes = tf.stack([y0, x0, y0 + side, x0 + side], axis=1)
        x = tf.image.crop_and_resize(x, boxes, tf.range(b), [crop, crop])
        if policy.flux > 0:
            x = x * tf.random.uniform([b, 1, 1, 3], 1.0 - policy.flux, 1.0 + policy.flux)
        if radius:
            sigma = tf.random.uniform([], 0.3, policy.blur)
            k = _gaussian_kernel(sigma, radius)
            kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
            ky = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
            blurred = tf.nn.depthwise_conv2d(
                tf.nn.depthwise_conv2d(x, kx, [1, 1, 1, 1], "SAME"), ky, [1, 1, 1, 1], "SAME"
            )
            mix = tf.random.uniform([b, 1, 1, 1])
            x = mix * blurred + (1.0 - mix) * x
        if policy.sky > 0:
            x = x + tf.random.uniform([b, 1, 1, 3], -policy.sky, policy.sky) * 255.0
        if policy.noise > 0:
            x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([b, 1, 1, 1], 0.0, policy.noise * 255.0)
        return tf.clip_by_value(x, 0.0, 255.0)

    return views
