"""Data and corruptions for ``benchmarks/shift.py``: digits images, FSDD waveforms, regression under covariate shift.

Every corruption takes a severity index 1..5 and a numpy generator (so each corrupted set is
reproducible) and returns arrays of the same shape and dtype. Severity 0 is the clean data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import ndimage, signal

from uncertlr.data import fix_length

SEVERITIES = (1, 2, 3, 4, 5)

# --------------------------------------------------------------------------- digits (8x8 images in [0, 1])

DIGIT_LEVELS = {
    "noise": (0.1, 0.2, 0.3, 0.4, 0.5),  # Gaussian pixel noise std
    "blur": (0.4, 0.6, 0.8, 1.0, 1.2),  # Gaussian blur std (pixels)
    "rotation": (10.0, 20.0, 30.0, 40.0, 50.0),  # degrees, random sign
    "shift": (0.5, 1.0, 1.5, 2.0, 2.5),  # pixels, random direction
    "contrast": (0.7, 0.5, 0.35, 0.2, 0.1),  # contrast factor around each image's mean
}
# Held-out *validation* corruptions (as ImageNet-C's extra four, Hendrycks & Dietterich 2019): other kinds than
# the test ones above, used only to choose settings for shift (``bnn-cval``); never scored as a test condition.
VALIDATION_DIGIT_LEVELS = {
    "impulse": (0.03, 0.06, 0.1, 0.15, 0.2),  # fraction of pixels set to 0 or 1 (salt and pepper)
    "zoom": (1.1, 1.2, 1.3, 1.4, 1.5),  # scale factor about the centre, in or out at random
    "occlusion": (2, 3, 4, 5, 6),  # side (pixels) of a blank square at a random place
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to every pixel
}


def corrupt_digits(x: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Corrupt flat digits ``x[N, 64]`` (values in [0, 1]); returns ``[N, 64]`` float32 in [0, 1].

    ``kind`` is a test corruption (:data:`DIGIT_LEVELS`) or a validation one (:data:`VALIDATION_DIGIT_LEVELS`).
    """
    if kind not in DIGIT_LEVELS and kind not in VALIDATION_DIGIT_LEVELS:
        raise ValueError(
            f"unknown digits corruption {kind!r}; known: {sorted(DIGIT_LEVELS) + sorted(VALIDATION_DIGIT_LEVELS)}"
        )
    level = (DIGIT_LEVELS | VALIDATION_DIGIT_LEVELS)[kind][severity - 1]
    img = x.reshape(-1, 8, 8).astype(np.float64)
    if kind == "noise":
        out = img + rng.normal(0.0, level, img.shape)
    elif kind == "blur":
        out = np.stack([ndimage.gaussian_filter(i, level, mode="constant") for i in img])
    elif kind == "rotation":
        signs = rng.choice([-1.0, 1.0], len(img))
        out = np.stack([ndimage.rotate(i, s * level, reshape=False, order=1) for i, s in zip(img, signs)])
    elif kind == "shift":
        angles = rng.uniform(0, 2 * math.pi, len(img))
        out = np.stack(
            [
                ndimage.shift(i, (level * math.sin(a), level * math.cos(a)), order=1)
                for i, a in zip(img, angles)
            ]
        )
    elif kind == "contrast":
        mean = img.mean(axis=(1, 2), keepdims=True)
        out = (img - mean) * level + mean
    elif kind == "impulse":
        hit = rng.random(img.shape) < level
        out = np.where(hit, rng.integers(0, 2, img.shape).astype(np.float64), img)
    elif kind == "zoom":
        factors = np.where(rng.random(len(img)) < 0.5, level, 1.0 / level)
        centre = np.array([3.5, 3.5])
        out = np.stack(
            [
                ndimage.affine_transform(i, np.eye(2) / f, offset=centre - centre / f, order=1)
                for i, f in zip(img, factors)
            ]
        )
    elif kind == "occlusion":
        side = int(level)
        corners = rng.integers(0, 8 - side + 1, (len(img), 2))
        out = img.copy()
        for i, (r, c) in enumerate(corners):
            out[i, r : r + side, c : c + side] = 0.0
    else:  # brightness
        out = img + level
    return np.clip(out, 0.0, 1.0).reshape(len(x), 64).astype(np.float32)


# --------------------------------------------------------------------------- FSDD (8 kHz waveforms)

AUDIO_LEVELS = {
    "noise": (30.0, 20.0, 10.0, 5.0, 0.0),  # white-noise SNR (dB) over the whole window
    "time-shift": (0.05, 0.1, 0.2, 0.3, 0.4),  # seconds, random direction
    "pitch-tempo": (1.1, 1.2, 1.3, 1.4, 1.5),  # resampling factor (up or down at random): pitch and tempo
    "reverb": (0.1, 0.2, 0.3, 0.5, 0.8),  # RT60 (s) of an exponentially decaying noise impulse response
}
SAMPLE_RATE = 8000


def corrupt_wave(
    w: np.ndarray, kind: str, severity: int, rng: np.random.Generator, length: int
) -> np.ndarray:
    """One corrupted waveform, already fixed to ``length`` samples (the feature window)."""
    level = AUDIO_LEVELS[kind][severity - 1]
    w = np.asarray(w, dtype=np.float64)
    power = float(np.mean(w**2)) + 1e-12
    if kind == "noise":
        fixed = fix_length(w, length)
        return (fixed + rng.normal(0.0, math.sqrt(power / 10 ** (level / 10)), length)).astype(np.float32)
    if kind == "time-shift":
        k = int(round(level * SAMPLE_RATE)) * int(rng.choice([-1, 1]))
        fixed = fix_length(w, length)
        out = np.zeros_like(fixed)
        if k >= 0:
            out[k:] = fixed[: length - k]
        else:
            out[:k] = fixed[-k:]
        return out.astype(np.float32)
    if kind == "pitch-tempo":
        r = level if rng.random() < 0.5 else 1.0 / level
        pos = np.arange(0.0, len(w) - 1, r)
        return fix_length(np.interp(pos, np.arange(len(w)), w), length).astype(np.float32)
    if kind == "reverb":
        n = int(level * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        ir = rng.normal(0.0, 1.0, n) * np.exp(-6.9 * t / level)  # -60 dB at t = RT60
        ir[0] = 1.0
        out = signal.fftconvolve(w, ir)
        out *= math.sqrt(power / (float(np.mean(out**2)) + 1e-12))
        return fix_length(out, length).astype(np.float32)
    raise ValueError(f"unknown audio corruption {kind!r}")


# --------------------------------------------------------------------------- regression under covariate shift


class Regression(NamedTuple):
    """Standardised train/validation/test arrays; ``y_loc``/``y_scale`` map targets back to original units."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_loc: float
    y_scale: float


def _standardised(x_tr, y_tr, x_te, y_te, seed: int, val: float = 0.15) -> Regression:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x_tr))
    nv = max(1, int(round(val * len(x_tr))))
    vi, ti = perm[:nv], perm[nv:]
    mx, sx = x_tr[ti].mean(0), x_tr[ti].std(0) + 1e-8
    my, sy = float(y_tr[ti].mean()), float(y_tr[ti].std() + 1e-8)

    def fx(a: np.ndarray) -> np.ndarray:
        return ((a - mx) / sx).astype(np.float32)

    def fy(a: np.ndarray) -> np.ndarray:
        return ((a - my) / sy).astype(np.float32)[:, None]

    return Regression(fx(x_tr[ti]), fy(y_tr[ti]), fx(x_tr[vi]), fy(y_tr[vi]), fx(x_te), fy(y_te), my, sy)


def diabetes_shift(seed: int) -> Regression:
    """sklearn diabetes split on BMI: the lower 70% of patients train, the upper 30% test."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = np.argsort(x[:, 2], kind="stable")  # column 2 is BMI
    cut = int(0.7 * len(x))
    return _standardised(x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]], seed)


def toy_extrapolation(seed: int, n: int = 200) -> Regression:
    """``y = sin(x) + N(0, 0.1²)``: train on ``x ∈ [-3, 3]``, test on ``3 < |x| < 5`` (extrapolation)."""
    rng = np.random.default_rng(1000 + seed)
    x_tr = rng.uniform(-3, 3, (n, 1))
    x_te = rng.uniform(3, 5, (n, 1)) * rng.choice([-1.0, 1.0], (n, 1))

    def f(a: np.ndarray) -> np.ndarray:
        return np.sin(a[:, 0]) + rng.normal(0.0, 0.1, len(a))

    return _standardised(x_tr, f(x_tr), x_te, f(x_te), seed)


REGRESSION: dict[str, Callable[[int], Regression]] = {
    "diabetes-shift": diabetes_shift,
    "toy-extrapolation": toy_extrapolation,
}
