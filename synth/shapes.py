"""The pieces a synthetic galaxy is built from: the pixel grid, GalSim profiles (Sersic, inclined disks) and
the numpy patterns GalSim has no primitive for (spiral arms, knots, lopsided bodies, tidal tails)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import galsim
import numpy as np

#: DECaLS pixel scale (arcsec) of a 256 px cutout; other sizes keep the same field of view.
PIXEL_SCALE_256: float = 0.262


GSPARAMS = galsim.GSParams(
    maximum_fft_size=2048, folding_threshold=1e-2, maxk_threshold=3e-3, kvalue_accuracy=1e-4, xvalue_accuracy=1e-4
)


@dataclass(frozen=True)
class Grid:
    """The drawing grid: ``n`` x ``n`` pixels of ``scale`` arcsec, coordinates about the centre."""

    n: int
    scale: float
    x: np.ndarray
    y: np.ndarray


@lru_cache(maxsize=8)
def _grid(n: int, scale: float) -> Grid:
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return Grid(n, scale, (xx - c) * scale, (yy - c) * scale)


def render_grid(size: int) -> Grid:
    """Grid the scene is drawn on for an output of ``size`` px (half resolution from 64 px up)."""
    n = size // 2 if size >= 64 else size
    return _grid(n, PIXEL_SCALE_256 * 256 / n)


def pixel_scale(size: int) -> float:
    """Arcsec per output pixel (0.262 at 256 px; the field of view is the same at every size)."""
    return PIXEL_SCALE_256 * 256 / size


# --------------------------------------------------------------------------- small helpers
def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _int(rng: np.random.Generator, r: tuple[float, float]) -> int:
    return int(rng.integers(int(round(r[0])), int(round(r[1])) + 1))


def _jitter(sed: np.ndarray, rng: np.random.Generator, amount: float = 0.08) -> np.ndarray:
    """Shift a colour along the blue-red direction (independent per-band jitter would turn green)."""
    t = rng.normal(0.0, amount)
    return (sed * np.exp(np.array([-t, 0.0, t]))).astype(np.float32)


def _sersic(n: float, hlr: float, flux: float = 1.0) -> galsim.GSObject:
    # n is quantised and the truncation is a fixed multiple of the radius, so GalSim's per-profile
    # tables are cached in each worker (a new one costs ~20 ms); the truncation keeps FFTs small.
    n_q = float(np.clip(np.round(n * 4) / 4, 0.5, 6.0))
    return galsim.Sersic(n=n_q, half_light_radius=hlr, flux=flux, trunc=6 * hlr, gsparams=GSPARAMS)


def _incline(obj: galsim.GSObject, q: float, pa: float) -> galsim.GSObject:
    """Compress ``obj`` by ``q`` along its y axis, then rotate by ``pa`` (flux kept)."""
    c, s = np.cos(pa), np.sin(pa)
    return obj.transform(c, -s * q, s, c * q).withFlux(obj.flux)


def _frame(grid: Grid, q: float, pa: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates in the frame of a disk of axis ratio ``q`` at angle ``pa`` (undoes ``_incline``)."""
    c, s = np.cos(pa), np.sin(pa)
    return grid.x * c + grid.y * s, (-grid.x * s + grid.y * c) / max(q, 1e-3)


def _scaled(pattern: np.ndarray, flux: float) -> np.ndarray:
    """``pattern`` rescaled to a total of ``flux`` (zeros if it is empty)."""
    total = float(pattern.sum())
    return pattern * (flux / total) if total > 0 and flux > 0 else np.zeros_like(pattern)


def _splat(grid: Grid, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Deposit point fluxes ``w`` at arcsec positions ``(x, y)`` on the grid (bilinear)."""
    fx = x / grid.scale + (grid.n - 1) / 2.0
    fy = y / grid.scale + (grid.n - 1) / 2.0
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = fx - ix, fy - iy
    out = np.zeros(grid.n * grid.n, dtype=np.float64)
    corners = ((0, 0, (1 - tx) * (1 - ty)), (1, 0, tx * (1 - ty)), (0, 1, (1 - tx) * ty), (1, 1, tx * ty))
    for ox, oy, wt in corners:
        jx, jy = ix + ox, iy + oy
        ok = (jx >= 0) & (jx < grid.n) & (jy >= 0) & (jy < grid.n)
        out += np.bincount(jy[ok] * grid.n + jx[ok], weights=(w * wt)[ok], minlength=grid.n * grid.n)
    return out.reshape(grid.n, grid.n).astype(np.float32)


def _knots(
    grid: Grid, rng: np.random.Generator, *, n: int, hlr: float, q: float, pa: float, dx: float = 0.0, dy: float = 0.0
) -> np.ndarray:
    """Star-forming knots: ``galsim.RandomKnots`` positions, inclined and deposited as unit-flux points.

    Depositing them on the grid (convolved with the PSF together with the arm pattern) is far
    cheaper than GalSim's k-space sum over delta functions (~0.1 ms per knot at 128 px).
    """
    knots = galsim.RandomKnots(n, half_light_radius=hlr, rng=galsim.BaseDeviate(int(rng.integers(1, 2**31))))
    pts = knots.points
    c, s = np.cos(pa), np.sin(pa)
    x, y = pts[:, 0], pts[:, 1] * q
    w = rng.lognormal(0.0, 0.6, n)
    return _splat(grid, x * c - y * s + dx, x * s + y * c + dy, w / w.sum())


def _spiral(
    grid: Grid,
    rng: np.random.Generator,
    *,
    q: float,
    pa: float,
    pitch_deg: float,
    r_in: float,
    r_scale: float,
    n_arms: int,
    phase: float,
    flocculence: float = 0.0,
) -> np.ndarray:
    """A logarithmic-spiral arm pattern in the disk frame, starting at ``r_in``."""
    xp, yp = _frame(grid, q, pa)
    r = np.hypot(xp, yp) + 1e-3
    phi = np.arctan2(yp, xp) * (1 if rng.random() < 0.5 else -1)
    k = 1.0 / np.tan(np.radians(pitch_deg))
    wobble = flocculence * np.sin(rng.uniform(1, 3) * np.log(r / r_in + 1) + rng.uniform(0, 2 * np.pi))
    theta = n_arms * (phi - k * np.log(r / r_in + 0.3) + wobble) - phase
    ridge = (0.5 * (1 + np.cos(theta))) ** rng.uniform(2.0, 4.0)
    envelope = np.exp(-r / r_scale) * (1 - np.exp(-((r / r_in) ** 3)))
    return ridge * envelope


def _lopsided_body(
    grid: Grid, rng: np.random.Generator, *, hlr: float, q: float, pa: float, strength: float
) -> np.ndarray:
    """An exponential disk with an m=1 asymmetry (one side brighter and more extended)."""
    xp, yp = _frame(grid, q, pa)
    rs = hlr / 1.678
    r = np.hypot(xp, yp)
    phi = np.arctan2(yp, xp) - rng.uniform(0, 2 * np.pi)
    warp = 1 + strength * np.cos(phi) * (r / rs) / (1 + r / rs)
    return np.exp(-r / (rs * warp))


def _tails(
    grid: Grid,
    rng: np.random.Generator,
    *,
    centres: list[tuple[float, float]],
    length: float,
    width: float,
    n_tails: int,
) -> np.ndarray:
    """Curved tidal tails: points along bent arcs from the ``centres``, fading outwards, blurred."""
    xs, ys, ws = [], [], []
    for _ in range(n_tails):
        cx, cy = centres[rng.integers(len(centres))]
        ang, bend = rng.uniform(0, 2 * np.pi), rng.uniform(-1.8, 1.8)
        t = rng.uniform(0.1, 1.0, 150)
        a = ang + bend * t
        spread = width * (0.4 + t) * rng.standard_normal((2, t.size))
        xs.append(cx + length * t * np.cos(a) + spread[0])
        ys.append(cy + length * t * np.sin(a) + spread[1])
        ws.append(np.exp(-2.0 * t))
    pts = _splat(grid, np.concatenate(xs), np.concatenate(ys), np.concatenate(ws))
    return cv2.GaussianBlur(pts, (0, 0), max(0.5 * width / grid.scale, 0.8))


# --------------------------------------------------------------------------- class recipes
#: A piece of the scene and its (g, r, z) colour: a GalSim profile (convolved with the PSF by
#: GalSim) or a numpy flux-per-pixel pattern on the grid (convolved with GalSim's PSF image).
Component = tuple["galsim.GSObject | np.ndarray", np.ndarray]
