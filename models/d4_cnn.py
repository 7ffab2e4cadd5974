"""``d4_cnn``: a D4 (p4m) group-equivariant CNN whose embedding is invariant to the 8 orientations.

Galaxies have no preferred orientation, and the 90 degree rotations and flips of D4 are exact on a
pixel grid. Layout::

    Rescaling(1/255) -> D4Lift(f1) -> BN -> act -> D4MaxPool
    -> [D4Conv(f) -> BN -> act -> D4MaxPool] for each further entry of ``filters`` (no pool after the last)
    -> invariant pooling -> Dropout -> [head]

The invariant pooling (``pool``) is ``radial`` by default: the 8 orientation slices pooled by
``group_pool``, then means over ``rings`` concentric rings around the cutout's centre
(:class:`~models.layers.d4.D4RadialPool`), so the head sees each feature's radial profile (``rings x
filters[-1]`` values; ``ring_stats: [mean, max]`` adds each ring's maximum, which also sees light covering
only part of a ring). ``group_pool: max`` (default) is orientation pooling - the strongest orientation's
response at each pixel, which keeps anisotropy (edge-on discs, bars); ``mean`` averages it away (an edge
detector firing strongly in one orientation looks like a weak one in all 8). ``pool: mean`` is the classic
global mean over the group and the plane (:class:`~models.layers.d4.D4Invariant`, ``filters[-1]`` values): it
measured worse on the real GZ2 bed (see the README's backbone benchmark), because a galaxy's
concentration and extent, which morphology depends on, do not survive a global mean.

Batch norm acts on the last axis only, so its statistics are shared over the 8 group slices (a
group-aware batch norm). Each pooled map must have an even side for the pooling to stay exactly
equivariant; the builder checks the crop.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError
from models.registry import backbone_params, register


def _filters(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and 1 <= len(value) <= 6
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 512 for v in value)
    )


PARAMS = {
    "filters": ((8, 16, 24, 32), _filters, "a list of 1-6 channel counts per group slice, e.g. [8, 16, 24, 32]"),
    "kernel_size": (3, lambda v: isinstance(v, int) and v in (3, 5, 7), "3, 5 or 7 (odd sizes keep rotations exact)"),
    "batch_norm": (True, lambda v: isinstance(v, bool), "true or false"),
    # see models/resnet.py: 0.99 leaves the moving statistics unconverged on small catalogs
    "pool": ("radial", lambda v: v in ("radial", "mean"), "radial (ring means, the default) or mean (global)"),
    "rings": (3, lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16, "an int in 1..16"),
    "ring_stats": (
        ("mean",),
        lambda v: (
            isinstance(v, tuple) and 1 <= len(v) <= 2 and len(set(v)) == len(v) and all(s in ("mean", "max") for s in v)
        ),
        "a list of mean and/or max, e.g. [mean, max]",
    ),
    # max (orientation pooling) measured better than mean on GZ2 and the synthetic set (README)
    "group_pool": ("max", lambda v: v in ("mean", "max"), "max (the default) or mean, over the 8 orientations"),
    "bn_momentum": (0.9, lambda v: isinstance(v, float) and 0.5 <= v < 1, "a float in [0.5, 1), e.g. 0.9"),
}


@register("d4_cnn", PARAMS)
def build_d4_cnn(inputs: Any, cfg: Any, dtype: Any) -> Any:
    """The D4-equivariant feature extractor (see the module docstring)."""
    import keras

    from models.layers.d4 import D4Conv, D4Invariant, D4Lift, D4MaxPool, D4RadialPool

    p = backbone_params(cfg)
    size = int(inputs.shape[1])
    filters = p["filters"]
    side = size
    for i in range(len(filters) - 1):
        if side % 2:
            raise ConfigError(
                f"d4_cnn pools {len(filters) - 1} times, but the map is {side} px (odd) before pool "
                f"{i + 1} with data.crop={size}; use a crop divisible by {2 ** (len(filters) - 1)} or "
                "fewer model.params.filters"
            )
        side //= 2
    x = keras.layers.Rescaling(1.0 / 255, dtype=dtype, name="rescale")(inputs)
    for i, n in enumerate(filters, start=1):
        if i == 1:
            x = D4Lift(n, p["kernel_size"], dtype=dtype, name="d4_lift")(x)
        else:
            x = D4Conv(n, p["kernel_size"], dtype=dtype, name=f"d4_conv{i}")(x)
        if p["batch_norm"]:
            x = keras.layers.BatchNormalization(axis=-1, momentum=p["bn_momentum"], dtype=dtype, name=f"d4_bn{i}")(x)
        x = keras.layers.Activation(cfg.activation, dtype=dtype, name=f"d4_act{i}")(x)
        if i < len(filters):
            x = D4MaxPool(dtype=dtype, name=f"d4_pool{i}")(x)
    if p["pool"] == "radial":
        if 2 * p["rings"] > side:
            raise ConfigError(
                f"d4_cnn's last map is {side} px with data.crop={size}: too small for "
                f"model.params.rings={p['rings']}; use rings <= {max(1, side // 2)} or pool: mean"
            )
        x = D4RadialPool(p["rings"], p["ring_stats"], p["group_pool"], dtype=dtype, name="d4_invariant")(x)
    else:
        x = D4Invariant(dtype=dtype, name="d4_invariant")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, dtype=dtype, name="dropout")(x)
    return x
