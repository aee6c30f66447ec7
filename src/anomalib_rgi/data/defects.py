"""Synthetic defects with exact masks, for the built-in data set.

Version 1 plants four hard-edged, high-contrast kinds: scratches near black or white, stains shifted
by 0.25-0.4, near-black holes, patches of another photograph. Version 2 adds the faint ways real
parts fail: translucent stains, soft burns with a falloff, thin branching cracks, dents that only
change the shading, smeared texture that keeps the mean, and small particles or fibres; colour
images also get pure hue shifts.

Every generator takes an image in [0, 1], ``(H, W)`` grey or ``(H, W, 3)`` colour, and returns the
defective image and a boolean mask. For defects with a hard edge the mask is exactly the changed
pixels. For soft ones (translucent stain, burn, dent) it is where the defect's strength is at least
half its peak, the defect's full width at half maximum: the faint halo outside changes each pixel by
less than half the peak and is counted as neither defect nor normal by design of the generator, not
by the metric (it stays unmasked).
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from itertools import pairwise

import numpy as np
from scipy import ndimage

DEFECT_TYPES_V1 = ("scratch", "stain", "hole", "foreign")
DEFECT_TYPES_V2 = (*DEFECT_TYPES_V1, "translucent", "burn", "crack", "dent", "smear", "particles")
COLOUR_DEFECT_TYPES = (*DEFECT_TYPES_V2, "hue")


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image.mean(axis=2)


def _blend(image: np.ndarray, target: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """``(1 - alpha) * image + alpha * target`` per pixel, for grey or colour images."""
    weight = alpha if image.ndim == 2 else alpha[..., None]
    return (1.0 - weight) * image + weight * target


def blob_mask(size: int, rng: np.random.Generator, min_radius: float, max_radius: float) -> np.ndarray:
    """Return an irregular blob: an ellipse whose boundary is perturbed by smooth noise."""
    radius_y, radius_x = rng.uniform(min_radius, max_radius, size=2)
    cy, cx = rng.uniform(max(radius_y, radius_x) + 2, size - max(radius_y, radius_x) - 2, size=2)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 16)
    noise = noise / (np.abs(noise).max() + 1e-8)
    return (u / radius_x) ** 2 + (v / radius_y) ** 2 + 0.35 * noise < 1.0


def _curve(size: int, rng: np.random.Generator, start: np.ndarray, end: np.ndarray, bend: float) -> np.ndarray:
    """Pixels of a quadratic Bezier curve from ``start`` to ``end`` (one pixel wide)."""
    from skimage.draw import line  # noqa: PLC0415

    mask = np.zeros((size, size), dtype=bool)
    control = (start + end) / 2 + rng.normal(scale=bend, size=2)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    curve = np.clip(np.round(curve), 0, size - 1).astype(int)
    for (r0, c0), (r1, c1) in pairwise(curve):
        rr, cc = line(r0, c0, r1, c1)
        mask[rr, cc] = True
    return mask


def _soft_blob(size: int, rng: np.random.Generator, min_radius: float, max_radius: float, blur: float) -> np.ndarray:
    """Return a blob with a smooth falloff, peak 1."""
    alpha = ndimage.gaussian_filter(blob_mask(size, rng, min_radius, max_radius).astype(np.float32), sigma=blur)
    return alpha / max(float(alpha.max()), 1e-6)


def scratch(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant a thin curved line set near black or near white."""
    size = image.shape[0]
    ends = rng.uniform(0.15 * size, 0.85 * size, size=(2, 2))
    mask = ndimage.binary_dilation(_curve(size, rng, ends[0], ends[1], size / 8), iterations=int(rng.integers(1, 3)))
    out = image.copy()
    out[mask] = rng.choice([rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0)])
    return out, mask


def stain(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant a blob, smoothed and shifted in brightness by 0.25-0.4."""
    size = image.shape[0]
    mask = blob_mask(size, rng, size / 14, size / 6)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.4)
    sigma = (2.0, 2.0) if image.ndim == 2 else (2.0, 2.0, 0.0)
    smoothed = ndimage.gaussian_filter(image, sigma=sigma)
    out = image.copy()
    out[mask] = np.clip(0.5 * image[mask] + 0.5 * smoothed[mask] + shift, 0.0, 1.0)
    return out, mask


def hole(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant a near-black blob."""
    size = image.shape[0]
    mask = blob_mask(size, rng, size / 18, size / 8)
    out = image.copy()
    shape = (int(mask.sum()),) if image.ndim == 2 else (int(mask.sum()), image.shape[2])
    out[mask] = rng.uniform(0.0, 0.08) + rng.normal(scale=0.01, size=shape)
    return out, mask


def foreign(
    image: np.ndarray, rng: np.random.Generator, foreign_crop: np.ndarray, **_: object
) -> tuple[np.ndarray, np.ndarray]:
    """Plant a blob of another photograph."""
    size = image.shape[0]
    mask = blob_mask(size, rng, size / 12, size / 6)
    out = image.copy()
    out[mask] = foreign_crop[mask]
    return out, mask


def translucent(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant a texture-less, lighter or darker film of opacity 0.2-0.6 with soft edges (discolouration)."""
    size = image.shape[0]
    alpha = _soft_blob(size, rng, size / 10, size / 4, blur=size / 32)
    opacity = rng.uniform(0.2, 0.6)
    if image.ndim == 2:
        tint: np.ndarray | float = float(rng.choice([rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95)]))
    else:
        tint = rng.uniform(0.1, 0.9, size=3)
    return _blend(image, tint, opacity * alpha), alpha >= 0.5


def burn(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant a scorch mark: darkening (brown on colour) strongest at its centre, falling off smoothly."""
    size = image.shape[0]
    alpha = _soft_blob(size, rng, size / 12, size / 5, blur=size / 16)
    strength = rng.uniform(0.35, 0.7)
    colour: np.ndarray | float = 0.05 if image.ndim == 2 else np.array([0.25, 0.12, 0.04])
    return _blend(image, colour, strength * alpha), alpha >= 0.5


def crack(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant a thin (1-2 px) crack with 1-3 branches, darkened by a factor of 0.35-0.6."""
    size = image.shape[0]
    ends = rng.uniform(0.1 * size, 0.9 * size, size=(2, 2))
    mask = _curve(size, rng, ends[0], ends[1], size / 10)
    trunk = np.argwhere(mask)
    for _ in range(int(rng.integers(1, 4))):
        start = trunk[int(rng.integers(len(trunk)))].astype(float)
        end = np.clip(start + rng.normal(scale=size / 6, size=2), 0, size - 1)
        mask |= _curve(size, rng, start, end, size / 20)
    if rng.random() < 0.5:
        mask = ndimage.binary_dilation(mask, structure=np.array([[0, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool))
    out = image.copy()
    out[mask] = image[mask] * rng.uniform(0.35, 0.6)
    return out, mask


def dent(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant a dent or bump seen only as shading: light from one side, brightness within +/-0.1."""
    size = image.shape[0]
    height = _soft_blob(size, rng, size / 10, size / 5, blur=size / 12)
    angle = rng.uniform(0, 2 * np.pi)
    slope_y, slope_x = np.gradient(height)
    shading = slope_x * np.cos(angle) + slope_y * np.sin(angle)
    shading *= rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.1) / max(float(np.abs(shading).max()), 1e-6)
    change = shading if image.ndim == 2 else shading[..., None]
    return image + change, height >= 0.5


def smear(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant missing texture: a region blurred flat, its mean kept."""
    size = image.shape[0]
    mask = blob_mask(size, rng, size / 10, size / 5)
    sigma = rng.uniform(3.0, 6.0)
    blurred = ndimage.gaussian_filter(image, sigma=(sigma, sigma) if image.ndim == 2 else (sigma, sigma, 0.0))
    blurred += image[mask].mean(axis=0) - blurred[mask].mean(axis=0)
    out = image.copy()
    out[mask] = blurred[mask]
    return out, mask


def particles(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Plant contamination: 3-12 small dark or bright specks and short fibres."""
    size = image.shape[0]
    mask = np.zeros((size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(3, 13))):
        if rng.random() < 0.5:
            cy, cx = rng.uniform(2, size - 2, size=2)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(1.0, 3.0) ** 2
        else:
            start = rng.uniform(4, size - 4, size=2)
            end = np.clip(start + rng.normal(scale=size / 12, size=2), 0, size - 1)
            mask |= _curve(size, rng, start, end, size / 30)
    out = image.copy()
    out[mask] = rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)])
    return out, mask


def hue(image: np.ndarray, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Turn a region's hue by 60-180 degrees, value and saturation kept (colour images only)."""
    if image.ndim != 3:
        msg = "A hue shift needs a colour image."
        raise ValueError(msg)
    size = image.shape[0]
    mask = blob_mask(size, rng, size / 12, size / 5)
    turn = rng.uniform(1 / 6, 1 / 2) * rng.choice([-1.0, 1.0])
    out = image.copy()
    hsv = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in image[mask]])
    hsv[:, 0] = (hsv[:, 0] + turn) % 1.0
    out[mask] = np.array([colorsys.hsv_to_rgb(*pixel) for pixel in hsv])
    return out, mask


GENERATORS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "scratch": scratch,
    "stain": stain,
    "hole": hole,
    "foreign": foreign,
    "translucent": translucent,
    "burn": burn,
    "crack": crack,
    "dent": dent,
    "smear": smear,
    "particles": particles,
    "hue": hue,
}


def add_defect(
    crop: np.ndarray, defect: str, rng: np.random.Generator, foreign_crop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plant one synthetic defect in a crop.

    Args:
        crop (np.ndarray): Crop in [0, 1], ``(H, W)`` or ``(H, W, 3)``.
        defect (str): A key of :data:`GENERATORS`.
        rng (np.random.Generator): Random source.
        foreign_crop (np.ndarray): A crop of the same shape from ANOTHER photograph (for ``"foreign"``).

    Returns:
        tuple[np.ndarray, np.ndarray]: The defective image, clipped to [0, 1], and its boolean mask.

    Raises:
        ValueError: On an unknown defect type.

    """
    if defect not in GENERATORS:
        msg = f"Unknown defect type {defect!r}; choose one of {tuple(GENERATORS)}."
        raise ValueError(msg)
    image, mask = GENERATORS[defect](crop, rng, foreign_crop=foreign_crop)
    return np.clip(image, 0.0, 1.0), mask
