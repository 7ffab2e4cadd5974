"""Render one synthetic Galaxy10-like image with GalSim (the per-image work of ``synth.generator``).

Each image is built from a few *components*, each with a g/r/z colour: a red bulge (and bar), a
bluer disk, blue arms and knots, tidal debris, field stars and background galaxies. Every
component is convolved with the image's PSF (GalSim Kolmogorov seeing) and drawn once; the g, r
and z images are colour-weighted sums of those draws, much cheaper than three full renders.

Analytic parts (Sersic bulges and smooth galaxies, exponential and ``InclinedExponential`` disks,
bars, companions, clumps) are GalSim profiles drawn by GalSim. Spiral arms, lopsided bodies and
tidal tails are not GalSim primitives: they are numpy patterns on the pixel grid, and knots are
``galsim.RandomKnots`` positions deposited on it; these are convolved with GalSim's PSF image
directly (0.3 ms), which measured 5x cheaper than wrapping them as ``galsim.InterpolatedImage``
for GalSim's FFT. The scene is drawn at half the output resolution (the PSF keeps it well
sampled), upsampled, given sky noise and mapped to RGB with the asinh stretch of the DECaLS
cutouts (z -> red, r -> green, g -> blue).
"""

from __future__ import annotations

import cv2
import galsim
import numpy as np

from pipelines.classes import CLASS_SLUGS
from synth.params import CLASS_RANGES, COMMON, DISTURBED_HOSTS
from synth.shapes import (
    GSPARAMS,
    Component,
    Grid,
    _incline,
    _int,
    _jitter,
    _knots,
    _lopsided_body,
    _scaled,
    _sersic,
    _spiral,
    _splat,
    _tails,
    _u,
    render_grid,
)

#: Per-band (g, r, z) weights and RGB planes of the DECaLS viewer's colour mapping.
RGB_SCALES: np.ndarray = np.array([6.0, 3.4, 2.2], dtype=np.float32)
#: Nominal sky noise per output pixel in r (flux units of the scene, before ``sky_sigma``).
SKY_SIGMA_R: float = 0.003
#: Nominal r-band flux of the target galaxy (before ``log_brightness``).
GALAXY_FLUX: float = 300.0

# Colours as (g, r, z) flux ratios normalised to r: old stars red, young stars blue.
SED_BULGE = np.array([0.52, 1.0, 1.45], dtype=np.float32)
SED_DISK = np.array([0.62, 1.0, 1.28], dtype=np.float32)
SED_YOUNG = np.array([0.80, 1.0, 1.05], dtype=np.float32)


def _smooth(rng: np.random.Generator, p: dict, pa: float) -> list[Component]:
    hlr, q, n = _u(rng, p["hlr"]), _u(rng, p["q"]), _u(rng, p["sersic_n"])
    body = _incline(_sersic(n, hlr), q, pa)
    if rng.random() < 0.3:  # a faint outer envelope
        env = _incline(_sersic(1.0, hlr * rng.uniform(1.8, 2.6)), q, pa)
        f = rng.uniform(0.1, 0.25)
        body = galsim.Sum([body.withFlux(1 - f), env.withFlux(f)], gsparams=GSPARAMS)
    return [(body, _jitter(SED_BULGE, rng))]


def _spiral_galaxy(
    rng: np.random.Generator,
    p: dict,
    pa: float,
    grid: Grid,
    *,
    bar_frac: float,
    n_arms: int,
    flocculence: float,
    knots: tuple[int, float] = (0, 0.0),
    lopsided: float = 0.0,
) -> list[Component]:
    """Bulge (+ bar) in red, disk, and blue arms (+ knots) drawn from one numpy pattern."""
    hlr, q = _u(rng, p["hlr"]), _u(rng, p["disk_q"])
    bulge_frac, arm_frac = _u(rng, p["bulge_frac"]), _u(rng, p["arm_frac"])
    n_knots, knot_frac = knots
    disk_frac = max(0.05, 1.0 - bulge_frac - arm_frac - bar_frac - knot_frac)
    comps: list[Component] = []
    if lopsided > 0:
        disk = _scaled(_lopsided_body(grid, rng, hlr=hlr, q=q, pa=pa, strength=lopsided), disk_frac)
    else:
        disk = _incline(galsim.Exponential(half_light_radius=hlr, flux=disk_frac, gsparams=GSPARAMS), q, pa)
    comps.append((disk, _jitter(SED_DISK, rng)))
    old: list[galsim.GSObject] = []
    if bulge_frac > 0:
        bulge = _sersic(rng.uniform(1.5, 3.5), hlr * rng.uniform(0.12, 0.25))
        bulge = _incline(bulge, rng.uniform(0.8, 1.0), pa)
        old.append(bulge.withFlux(bulge_frac))
    bar_angle = rng.uniform(0, np.pi)
    r_in = hlr * rng.uniform(0.25, 0.45)
    if bar_frac > 0:
        bar_len = hlr * _u(rng, p.get("bar_len", (0.5, 0.8)))
        bar = _sersic(rng.uniform(0.5, 1.0), bar_len * 0.55).shear(
            q=_u(rng, p.get("bar_q", (0.3, 0.45))), beta=bar_angle * galsim.radians
        )
        old.append(_incline(bar, q, pa).withFlux(bar_frac))
        r_in = bar_len
    if old:
        comps.append((galsim.Sum(old, gsparams=GSPARAMS), _jitter(SED_BULGE, rng)))
    arms = _spiral(
        grid,
        rng,
        q=q,
        pa=pa,
        pitch_deg=_u(rng, p["pitch"]),
        r_in=r_in,
        r_scale=hlr / 1.678 * 1.3,
        n_arms=n_arms,
        phase=n_arms * bar_angle,
        flocculence=flocculence,
    )
    young = _scaled(arms, arm_frac)
    if n_knots > 0 and knot_frac > 0:
        young += knot_frac * _knots(grid, rng, n=n_knots, hlr=hlr * 0.9, q=q, pa=pa)
    comps.append((young, _jitter(SED_YOUNG, rng)))
    return comps


def build_round(rng, p, pa, grid):  # noqa: D103 - the recipes are described in the module docstring
    return _smooth(rng, p, pa)


def build_in_between(rng, p, pa, grid):  # noqa: D103
    return _smooth(rng, p, pa)


def build_cigar(rng, p, pa, grid):  # noqa: D103
    return _smooth(rng, p, pa)


def build_barred(rng, p, pa, grid):  # noqa: D103
    return _spiral_galaxy(rng, p, pa, grid, bar_frac=_u(rng, p["bar_frac"]), n_arms=2, flocculence=0.1)


def build_tight_spiral(rng, p, pa, grid):  # noqa: D103
    n_arms = 3 if rng.random() < 0.2 else 2
    return _spiral_galaxy(rng, p, pa, grid, bar_frac=_u(rng, p["bar_frac"]), n_arms=n_arms, flocculence=0.1)


def build_loose_spiral(rng, p, pa, grid):  # noqa: D103
    n_arms = 3 if rng.random() < 0.3 else 2
    return _spiral_galaxy(
        rng,
        p,
        pa,
        grid,
        bar_frac=0.0,
        n_arms=n_arms,
        flocculence=0.35,
        knots=(_int(rng, p["n_knots"]), _u(rng, p["knot_frac"])),
        lopsided=_u(rng, p["lopsided"]),
    )


def _edge_on(rng: np.random.Generator, p: dict, pa: float) -> list[Component]:
    hlr = _u(rng, p["hlr"])
    inc = np.radians(_u(rng, p["inclination"]))
    bulge_frac = _u(rng, p["bulge_frac"])
    disk = galsim.InclinedExponential(
        inc * galsim.radians, half_light_radius=hlr, scale_h_over_r=_u(rng, p["h_over_r"]), gsparams=GSPARAMS
    )
    comps = [(disk.rotate(pa * galsim.radians).withFlux(1.0 - bulge_frac), _jitter(SED_DISK, rng))]
    if bulge_frac > 0:
        bq = _u(rng, p["bulge_q"]) if "bulge_q" in p else rng.uniform(0.6, 0.9)
        bulge = _incline(_sersic(rng.uniform(2.0, 4.0), hlr * rng.uniform(0.18, 0.35)), bq, pa)
        comps.append((bulge.withFlux(bulge_frac), _jitter(SED_BULGE, rng)))
    return comps


def build_edge_on_no_bulge(rng, p, pa, grid):  # noqa: D103
    return _edge_on(rng, p, pa)


def build_edge_on_bulge(rng, p, pa, grid):  # noqa: D103
    return _edge_on(rng, p, pa)


def build_disturbed(rng, p, pa, grid):  # noqa: D103
    # an irregular, smooth or spiral host, then disturbed: lopsided light, offset clumps, tidal debris
    host = rng.choice(list(DISTURBED_HOSTS), p=list(DISTURBED_HOSTS.values()))
    hlr, q = _u(rng, p["hlr"]), _u(rng, p["q"])
    clump_frac, tidal_frac = _u(rng, p["clump_frac"]), _u(rng, p["tidal_frac"])
    lopsided = _u(rng, p["lopsided"])
    host_frac = max(0.3, 1 - clump_frac - tidal_frac)
    young = _jitter(SED_YOUNG, rng, 0.12)
    disk_sed = _jitter(SED_DISK, rng, 0.12)
    if host == "spiral":
        spiral_p = {
            "hlr": (hlr, hlr),
            "disk_q": (q, q),
            "bulge_frac": p["bulge_frac"],
            "arm_frac": p["arm_frac"],
            "pitch": p["pitch"],
        }
        host_comps = _spiral_galaxy(
            rng,
            spiral_p,
            pa,
            grid,
            bar_frac=0.0,
            n_arms=2,
            flocculence=0.6,
            knots=(_int(rng, p["n_knots"]), _u(rng, p["knot_frac"])),
            lopsided=lopsided,
        )
        comps = [
            (obj * host_frac if isinstance(obj, np.ndarray) else obj.withScaledFlux(host_frac), sed)
            for obj, sed in host_comps
        ]
    else:
        knot_frac = _u(rng, p["knot_frac"]) if host == "irregular" else 0.0
        body = _lopsided_body(grid, rng, hlr=hlr, q=q, pa=pa, strength=lopsided)
        body = _scaled(body, host_frac - knot_frac)
        comps = [(body, disk_sed if host == "irregular" else _jitter(SED_BULGE, rng, 0.12))]
        if knot_frac > 0:
            dx, dy = rng.normal(0, 0.3 * hlr, 2)
            knots = _knots(
                grid, rng, n=_int(rng, p["n_knots"]), hlr=hlr * rng.uniform(0.6, 1.1), q=q, pa=pa, dx=dx, dy=dy
            )
            comps.append((knot_frac * knots, young))
    comps.append(
        (
            _scaled(
                _tails(
                    grid,
                    rng,
                    centres=[(0.0, 0.0)],
                    length=hlr * rng.uniform(1.5, 3.0),
                    width=hlr * 0.25,
                    n_tails=int(rng.integers(1, 3)),
                ),
                tidal_frac,
            ),
            disk_sed,
        )
    )
    clumps = []
    for w in rng.dirichlet(np.ones(_int(rng, p["n_clumps"]))):
        d, a = hlr * _u(rng, p["clump_offset"]), rng.uniform(0, 2 * np.pi)
        c = _incline(
            _sersic(rng.uniform(0.7, 1.5), hlr * rng.uniform(0.2, 0.5)), rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        )
        clumps.append(c.withFlux(w * clump_frac).shift(d * np.cos(a), d * np.sin(a)))
    comps.append((galsim.Sum(clumps, gsparams=GSPARAMS), young if rng.random() < 0.5 else disk_sed))
    return comps


def build_merging(rng, p, pa, grid):  # noqa: D103
    hlr = _u(rng, p["hlr"])
    ratio = _u(rng, p["flux_ratio"])
    sep = hlr * _u(rng, p["separation"])
    axis = rng.uniform(0, 2 * np.pi)
    f1, f2 = 1 / (1 + ratio), ratio / (1 + ratio)
    tail_frac = _u(rng, p["tail_frac"])
    c1 = (-sep * f2 * np.cos(axis), -sep * f2 * np.sin(axis))
    c2 = (sep * f1 * np.cos(axis), sep * f1 * np.sin(axis))
    bulges, disks = [], []
    for (cx, cy), f, h in ((c1, f1, hlr), (c2, f2, hlr * np.sqrt(ratio) * rng.uniform(0.8, 1.2))):
        b = _u(rng, p["bulge_frac"])
        q, gpa = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        bulge = _incline(_sersic(rng.uniform(2.0, 4.0), h * 0.35), q, gpa)
        disk = _incline(galsim.Exponential(half_light_radius=h, gsparams=GSPARAMS), q, gpa)
        bulges.append(bulge.withFlux(f * b * (1 - tail_frac)).shift(cx, cy))
        disks.append(disk.withFlux(f * (1 - b) * (1 - tail_frac)).shift(cx, cy))
    debris = _tails(
        grid,
        rng,
        centres=[c1, c2],
        length=hlr * rng.uniform(1.5, 3.5),
        width=hlr * 0.25,
        n_tails=int(rng.integers(1, 4)),
    )
    # the bridge: points scattered along the line joining the two nuclei
    t = rng.uniform(0.15, 0.85, 200)
    bridge = _splat(
        grid,
        c1[0] + t * (c2[0] - c1[0]) + rng.normal(0, 0.25 * hlr, t.size),
        c1[1] + t * (c2[1] - c1[1]) + rng.normal(0, 0.25 * hlr, t.size),
        np.ones_like(t),
    )
    debris = _scaled(debris, 0.6) + _scaled(cv2.GaussianBlur(bridge, (0, 0), 1.0), 0.4)
    disk_sed = _jitter(SED_DISK, rng)
    return [
        (galsim.Sum(bulges, gsparams=GSPARAMS), _jitter(SED_BULGE, rng)),
        (galsim.Sum(disks, gsparams=GSPARAMS), disk_sed),
        (_scaled(debris, tail_frac), disk_sed),
    ]


BUILDERS = {slug: globals()[f"build_{slug}"] for slug in CLASS_SLUGS}


# --------------------------------------------------------------------------- whole image
def _field_sources(
    grid: Grid, rng: np.random.Generator, psf_image: np.ndarray, n_stars: int, n_background: int
) -> np.ndarray:
    """Foreground stars (varied colours, now and then a bright one) and faint background galaxies.

    Both are deposited as points on the grid (a galaxy as a short blurred streak, for its size and
    elongation) and convolved with the PSF image in one pass; returns (n, n, 3) g/r/z.
    """
    ext = grid.n * grid.scale / 2
    out = np.zeros((grid.n, grid.n, 3), dtype=np.float32)
    if n_background:
        xs, ys, ws = [], [], []
        for _ in range(n_background):
            x, y = rng.uniform(-0.95 * ext, 0.95 * ext, 2)
            a, length = rng.uniform(0, np.pi), rng.uniform(0.0, 1.6)
            t = np.linspace(-0.5, 0.5, 5) * length
            xs.append(x + t * np.cos(a))
            ys.append(y + t * np.sin(a))
            ws.append(np.full(5, GALAXY_FLUX * 10 ** rng.uniform(-3.0, -1.9) / 5))
        gals = _splat(grid, np.concatenate(xs), np.concatenate(ys), np.concatenate(ws))
        gals = cv2.GaussianBlur(gals, (0, 0), rng.uniform(0.35, 0.7) / grid.scale)
        out += gals[..., None] * np.array([0.45, 1.0, 1.7], dtype=np.float32)
    if n_stars:
        x, y = rng.uniform(-ext, ext, (2, n_stars))
        bright = rng.random(n_stars) < 0.15
        log_flux = np.where(bright, rng.uniform(-2.0, -0.6, n_stars), rng.uniform(-3.2, -1.8, n_stars))
        flux = GALAXY_FLUX * 10**log_flux
        colour = np.stack([rng.uniform(0.3, 1.3, n_stars), np.ones(n_stars), rng.uniform(0.7, 1.8, n_stars)])
        for band in range(3):
            out[..., band] += _splat(grid, x, y, flux * colour[band])
    return cv2.filter2D(out, -1, psf_image, borderType=cv2.BORDER_CONSTANT)


def _dust_lane(grid: Grid, rng: np.random.Generator, depth: float, pa: float, hlr: float) -> np.ndarray:
    """Per-band transmission of a thin dust lane along the major axis (stronger in g)."""
    c, s = np.cos(pa), np.sin(pa)
    along = grid.x * c + grid.y * s
    across = -grid.x * s + grid.y * c - rng.normal(0, 0.15)
    lane = np.exp(-0.5 * (across / rng.uniform(0.35, 0.6)) ** 2) * np.exp(-0.5 * (along / (2.0 * hlr)) ** 2)
    return 1 - depth * lane[..., None] * np.array([1.0, 0.8, 0.55], dtype=np.float32)


def asinh_rgb(bands: np.ndarray, *, q: float = 20.0, m: float = 0.014) -> np.ndarray:
    """Map (H, W, 3) g/r/z fluxes to uint8 RGB with the DECaLS viewer's asinh stretch (z -> R).

    Colour-preserving: every band is scaled by the same ``asinh(q I) / I`` factor of the mean
    intensity ``I``; ``m`` lifts the sky to the dark grey of the cutouts.
    """
    scaled = bands * RGB_SCALES  # new float32 array; the rest works in place for speed
    scaled += m
    np.maximum(scaled, 0.0, out=scaled)
    intensity = scaled.sum(axis=-1, keepdims=True)
    intensity *= 1.0 / 3.0
    intensity += 1e-6
    factor = np.arcsinh(q * intensity)
    factor *= 255.0 / np.sqrt(q)
    factor /= intensity
    scaled *= factor
    np.minimum(scaled, 255.0, out=scaled)
    scaled += 0.5
    return scaled[..., ::-1].astype(np.uint8)


def draw_scene(comps: list[Component], psf: galsim.GSObject, psf_image: np.ndarray, grid: Grid) -> np.ndarray:
    """Convolve every component with the PSF once and sum them, colour-weighted, into (n, n, 3) g/r/z."""
    bands = np.zeros((grid.n, grid.n, 3), dtype=np.float32)
    canvas = galsim.ImageF(grid.n, grid.n, scale=grid.scale)
    for obj, sed in comps:
        if isinstance(obj, np.ndarray):
            # numpy patterns: convolving with GalSim's PSF image here costs ~0.3 ms, wrapping them
            # as InterpolatedImage for GalSim's FFT ~1.5 ms each (measured at 128 px)
            img = cv2.filter2D(obj.astype(np.float32), -1, psf_image, borderType=cv2.BORDER_CONSTANT)
        else:
            img = galsim.Convolve(obj, psf, gsparams=GSPARAMS).drawImage(image=canvas).array
        bands += img[..., None] * sed
    return bands


def render_image(label: int, seed: np.random.SeedSequence, size: int, difficulty: float) -> tuple[np.ndarray, float]:
    """Render one image of class ``label``; return ``(uint8 (size, size, 3), redshift)``.

    Everything random comes from ``seed`` (numpy for the parameters and noise, a GalSim
    ``BaseDeviate`` seeded from it for the knots), so an image depends only on its own seed.
    """
    rng = np.random.default_rng(seed)
    slug = CLASS_SLUGS[label]
    common = {k: r.at(difficulty) for k, r in COMMON.items()}
    p = {k: r.at(difficulty) for k, r in CLASS_RANGES[slug].items()}
    grid = render_grid(size)
    # Kolmogorov seeing: its analytic Fourier transform makes GalSim's FFT draws ~3x cheaper than Moffat's
    psf = galsim.Kolmogorov(fwhm=_u(rng, common["psf_fwhm"]), gsparams=GSPARAMS)
    stamp_n = 2 * int(np.ceil(4 * psf.fwhm / grid.scale)) + 1
    psf_image = psf.drawImage(nx=stamp_n, ny=stamp_n, scale=grid.scale).array.astype(np.float32)
    psf_image /= psf_image.sum()
    pa = rng.uniform(0, np.pi)
    brightness = GALAXY_FLUX * 10 ** _u(rng, common["log_brightness"])
    if slug == "disturbed":
        brightness *= 1 - _u(rng, p["brightness_drop"])
    bands = draw_scene(BUILDERS[slug](rng, p, pa, grid), psf, psf_image, grid)
    bands *= brightness
    if slug == "edge_on_bulge":
        depth = _u(rng, p["dust"])
        if depth > 0.05:
            bands *= _dust_lane(grid, rng, depth, pa, float(np.mean(p["hlr"])))
    offset, angle = _u(rng, common["offset"]) / grid.scale, rng.uniform(0, 2 * np.pi)
    shift = np.float32([[1, 0, offset * np.cos(angle)], [0, 1, offset * np.sin(angle)]])
    bands = cv2.warpAffine(bands, shift, (grid.n, grid.n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    bands += _field_sources(grid, rng, psf_image, _int(rng, common["n_stars"]), _int(rng, common["n_background"]))
    if grid.n != size:
        bands = cv2.resize(bands, (size, size), interpolation=cv2.INTER_CUBIC)
        bands *= (grid.n / size) ** 2
    sigma = (SKY_SIGMA_R * _u(rng, common["sky_sigma"]) * (3.4 / RGB_SCALES)).astype(np.float32)
    bands += rng.standard_normal((size, size, 3), dtype=np.float32) * sigma
    # brighter galaxies tend to be nearer
    redshift = 0.06 * np.exp(rng.normal(0, 0.45)) / np.sqrt(brightness / GALAXY_FLUX)
    redshift = float(np.clip(redshift, 0.005, 0.3))
    return asinh_rgb(bands), redshift
