"""The dihedral group D4 (the 8 rotations by 90 degrees and reflections of a pixel grid) and its layers.

An element ``g = (m, r)`` acts on an array's two spatial axes as "flip the columns if ``m``, then
rotate by ``r`` quarter turns" (:func:`transform`, numpy; :func:`transform_tensor`, Keras ops). Group
feature maps have the layout ``(batch, H, W, 8, F)``: one slice per group element.

The layers make a CNN equivariant to D4: for a rotated/flipped input ``T_h x``, every group feature map
is the same map transformed by ``h`` spatially with its group axis permuted (``g -> h^-1 g``), so
pooling over the group and the plane gives an embedding that is the same for all 8 orientations of a
galaxy. Lifting convolution and group convolution kernels are the 8 transformed copies of one shared
weight tensor (Cohen & Welling 2016, "Group Equivariant Convolutional Networks"; escnn/e2cnn and GroCo
were read for reference, the code is our own).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

#: The 8 elements as (flip, quarter turns), identity first.
ELEMENTS: tuple[tuple[int, int], ...] = tuple((m, r) for m in (0, 1) for r in range(4))
ORDER = len(ELEMENTS)


def transform(x: np.ndarray, g: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Apply element ``g`` (index into :data:`ELEMENTS`) to the spatial ``axes`` of a numpy array."""
    m, r = ELEMENTS[g]
    if m:
        x = np.flip(x, axis=axes[1])
    return np.rot90(x, r, axes=axes)


def _cayley() -> tuple[np.ndarray, np.ndarray]:
    probe = np.arange(9).reshape(3, 3)
    images = [transform(probe, g) for g in range(ORDER)]

    def find(a: np.ndarray) -> int:
        return next(k for k, im in enumerate(images) if np.array_equal(a, im))

    table = np.array([[find(transform(transform(probe, h), g)) for h in range(ORDER)] for g in range(ORDER)])
    inverse = np.array([int(np.flatnonzero(table[g] == 0)[0]) for g in range(ORDER)])
    return table, inverse


#: ``COMPOSE[g, h]``: the element "g after h"; ``INVERSE[g]``: g's inverse.
COMPOSE, INVERSE = _cayley()


def permutation(h: int) -> np.ndarray:
    """Group-axis permutation of a feature map under input transform ``h``: ``new[g] = old[h^-1 g]``."""
    return COMPOSE[INVERSE[h]]


def transform_feature_map(maps: np.ndarray, h: int) -> np.ndarray:
    """``(N, H, W, 8, F)`` group feature maps as they must look for an input transformed by ``h``."""
    return transform(maps, h, axes=(1, 2))[:, :, :, permutation(h)]


def transform_tensor(x: Any, g: int) -> Any:
    """:func:`transform` on the first two axes of a Keras tensor (a kernel)."""
    m, r = ELEMENTS[g]
    if m:
        x = ops.flip(x, axis=1)
    for _ in range(r):  # one counter-clockwise quarter turn, as numpy's rot90 on axes (0, 1)
        x = ops.flip(ops.swapaxes(x, 0, 1), axis=0)
    return x


class _GroupKernel(keras.layers.Layer):
    """A D4 convolution's shared parts: ``filters`` per group slice, an odd ``kernel_size``, one kernel
    and a bias per filter (shared by the 8 slices, so the bias keeps the equivariance)."""

    def __init__(self, filters: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"D4 kernels need an odd size, got {kernel_size}")
        self.filters, self.kernel_size = int(filters), int(kernel_size)

    def _make_weights(self, kernel_shape: tuple) -> None:
        self.kernel = self.add_weight(name="kernel", shape=kernel_shape, initializer=keras.initializers.HeNormal())
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="galaxy10")
class D4Lift(_GroupKernel):
    """Lifting convolution: an image ``(B, H, W, C)`` to group feature maps ``(B, H, W, 8, filters)``.

    One kernel is learned; output slice ``g`` is the input convolved with that kernel transformed by
    ``g``. ``kernel_size`` must be odd ("same" padding is then symmetric, which keeps the 90 degree
    rotations exact).
    """

    def build(self, input_shape: tuple) -> None:
        self._make_weights((self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters))

    def call(self, x: Any) -> Any:
        kernels = ops.concatenate([transform_tensor(self.kernel, g) for g in range(ORDER)], axis=-1)
        y = ops.conv(x, kernels, padding="same")
        shape = ops.shape(y)
        y = ops.reshape(y, (shape[0], shape[1], shape[2], ORDER, self.filters))
        return y + self.bias

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:3], ORDER, self.filters)


@keras.saving.register_keras_serializable(package="galaxy10")
class D4Conv(_GroupKernel):
    """Group convolution: ``(B, H, W, 8, F_in)`` to ``(B, H, W, 8, filters)``.

    The learned kernel ``psi`` has shape ``(k, k, 8, F_in, filters)``; output slice ``g`` uses ``psi``
    transformed by ``g`` in the plane with its group axis permuted by ``g^-1``.
    """

    def build(self, input_shape: tuple) -> None:
        self.in_filters = int(input_shape[-1])
        self._make_weights((self.kernel_size, self.kernel_size, ORDER, self.in_filters, self.filters))

    def call(self, x: Any) -> Any:
        k, c = self.kernel_size, self.in_filters
        parts = []
        for g in range(ORDER):
            permuted = ops.take(self.kernel, COMPOSE[INVERSE[g]], axis=2)
            parts.append(ops.reshape(transform_tensor(permuted, g), (k, k, ORDER * c, self.filters)))
        kernels = ops.concatenate(parts, axis=-1)
        shape = ops.shape(x)
        y = ops.conv(ops.reshape(x, (shape[0], shape[1], shape[2], ORDER * c)), kernels, padding="same")
        y = ops.reshape(y, (shape[0], shape[1], shape[2], ORDER, self.filters))
        return y + self.bias

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:4], self.filters)


class _Parameterless(keras.layers.Layer):
    """A layer without arguments of its own; the explicit config keeps it serializable when a dtype
    policy object is passed in."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def get_config(self) -> dict:
        return super().get_config()


@keras.saving.register_keras_serializable(package="galaxy10")
class D4MaxPool(_Parameterless):
    """2x2 spatial max pooling of group feature maps (exactly equivariant on even-sized maps)."""

    def call(self, x: Any) -> Any:
        shape = ops.shape(x)
        flat = ops.reshape(x, (shape[0], shape[1], shape[2], shape[3] * shape[4]))
        y = ops.max_pool(flat, pool_size=2, strides=2, padding="valid")
        out = ops.shape(y)
        return ops.reshape(y, (out[0], out[1], out[2], shape[3], shape[4]))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, g, f = input_shape
        return (b, None if h is None else h // 2, None if w is None else w // 2, g, f)


@keras.saving.register_keras_serializable(package="galaxy10")
class D4Invariant(_Parameterless):
    """Mean over the group axis and the plane: ``(B, H, W, 8, F)`` to an invariant ``(B, F)``."""

    def call(self, x: Any) -> Any:
        return ops.mean(x, axis=(1, 2, 3))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[-1])


def ring_matrix(side: int, rings: int) -> np.ndarray:
    """``(side*side, rings)`` averaging matrix: column ``k`` averages the pixels of ring ``k``.

    Rings are equal-width bands of distance from the map's centre ``((side-1)/2, (side-1)/2)``, out to
    the inscribed circle (corners join the outer ring). D4 maps each pixel to one at the same distance
    from the centre, so every ring is a union of orbits and ring means are exactly invariant.
    """
    c = (side - 1) / 2.0
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    r = np.sqrt((i - c) ** 2 + (j - c) ** 2).ravel()
    ring = np.minimum((r / (max(side / 2.0, 1e-9) / rings)).astype(np.int64), rings - 1)
    m = np.zeros((side * side, rings), dtype=np.float32)
    m[np.arange(side * side), ring] = 1.0
    counts = m.sum(axis=0)
    if (counts == 0).any():
        raise ValueError(f"a {side}x{side} map cannot hold {rings} non-empty rings; use fewer rings")
    return m / counts


#: Statistics :class:`D4RadialPool` can take over each ring.
RING_STATS: tuple[str, ...] = ("mean", "max")
#: How :class:`D4RadialPool` pools the 8 orientation slices before a ring mean.
GROUP_POOLS: tuple[str, ...] = ("mean", "max")


@keras.saving.register_keras_serializable(package="galaxy10")
class D4RadialPool(keras.layers.Layer):
    """Statistics over concentric rings: ``(B, H, W, 8, F)`` to an invariant ``(B, S*R*F)``.

    ``mean``: the mean over the group axis and the ring's pixels; ``max``: the maximum over both. Unlike
    :class:`D4Invariant` (one global mean), this keeps the radial profile of every feature - how
    concentrated, how extended a galaxy is - which morphology depends on (a centred cutout has its centre
    at the map centre); the maximum also sees light that covers only part of a ring (an elongated
    galaxy), which a ring mean dilutes. Exactly D4-invariant (see :func:`ring_matrix`).

    ``group``: how the 8 orientation slices are pooled before the ring ``mean`` - ``mean`` (default) or
    ``max`` (orientation pooling: the strongest orientation's response at every pixel, which keeps
    anisotropic structure - an edge-on disc, a bar - that a mean over orientations averages away).
    """

    def __init__(
        self, rings: int = 3, stats: tuple[str, ...] | list[str] = ("mean",), group: str = "mean", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.rings = int(rings)
        self.stats = tuple(str(s) for s in stats)
        self.group = str(group)
        if not self.stats or any(s not in RING_STATS for s in self.stats):
            raise ValueError(f"D4RadialPool stats {self.stats} must be a non-empty list of {RING_STATS}")
        if self.group not in GROUP_POOLS:
            raise ValueError(f"D4RadialPool group {self.group!r} must be one of {GROUP_POOLS}")

    def build(self, input_shape: tuple) -> None:
        h, w = input_shape[1], input_shape[2]
        if h is None or h != w:
            raise ValueError(f"D4RadialPool needs square maps of known size, got {h}x{w}")
        self._side = int(h)
        self._matrix = ring_matrix(self._side, self.rings)

    def call(self, x: Any) -> Any:
        shape = ops.shape(x)
        out = []
        group_max = ops.max(x, axis=3) if self.group == "max" or "max" in self.stats else None  # (B, H, W, F)
        if "mean" in self.stats:
            g = group_max if self.group == "max" else ops.mean(x, axis=3)
            flat = ops.reshape(g, (shape[0], self._side * self._side, shape[4]))
            m = ops.cast(ops.convert_to_tensor(self._matrix), flat.dtype)
            out.append(ops.reshape(ops.einsum("bpf,pr->brf", flat, m), (shape[0], self.rings * shape[4])))
        if "max" in self.stats:
            flat = ops.reshape(group_max, (shape[0], self._side * self._side, shape[4]))
            maxima = []
            for r in range(self.rings):
                pixels = np.flatnonzero(self._matrix[:, r] > 0)
                maxima.append(ops.max(ops.take(flat, pixels, axis=1), axis=1))  # (B, F)
            out.append(ops.concatenate(maxima, axis=-1))
        return out[0] if len(out) == 1 else ops.concatenate(out, axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        f = input_shape[-1]
        return (input_shape[0], None if f is None else len(self.stats) * self.rings * f)

    def get_config(self) -> dict:
        return {**super().get_config(), "rings": self.rings, "stats": list(self.stats), "group": self.group}
