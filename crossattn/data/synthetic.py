"""Synthetic stand-ins for CIFAR-10 and MNIST for offline tests and smoke runs.

Each class owns a smooth random template (a blurred colour field plus an
oriented grating). Samples are the template shifted by a few pixels, with
random contrast, brightness and heavy pixel noise. The class is therefore a
property of the whole spatial pattern: a small CNN learns it within a few
epochs, but no single pixel reveals it reliably.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .download import Dataset

SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 32, 32),
    "mnist": (1, 28, 28),
}
NUM_CLASSES = 10
SYNTHETIC_CLASSES: tuple[str, ...] = tuple(f"pattern_{i}" for i in range(NUM_CLASSES))
MAX_SHIFT = 2
NOISE_STD = 40.0
_GRID = 4  # coarse control points per side: keeps templates low-frequency
_CHUNK = 2048  # samples rendered at once, bounding float memory

# Distinct random streams so the test split does not depend on n_train.
_TEMPLATE_STREAM, _TRAIN_STREAM, _TEST_STREAM = 0, 1, 2


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights mapping n_in control points to n_out pixels."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), lo] = 1.0 - frac
    weights[np.arange(n_out), lo + 1] = frac
    return weights


def _grating(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random oriented sinusoid of 1-3 cycles per image, in [-1, 1]."""
    angle = rng.uniform(0.0, np.pi)
    cycles = rng.uniform(1.0, 3.0)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.meshgrid(np.arange(height) / height, np.arange(width) / width,
                         indexing="ij")
    return np.sin(2 * np.pi * cycles * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)


def make_templates(kind: Literal["cifar10", "mnist"], seed: int) -> np.ndarray:
    """Per-class float templates (10, C, H, W) in roughly [40, 215]."""
    channels, height, width = SHAPES[kind]
    rng = np.random.default_rng([seed, _TEMPLATE_STREAM])
    up_h, up_w = _upsample_matrix(height, _GRID), _upsample_matrix(width, _GRID)
    templates = np.empty((NUM_CLASSES, channels, height, width))
    for k in range(NUM_CLASSES):
        coarse = rng.uniform(-1.0, 1.0, size=(channels, _GRID, _GRID))
        field = up_h @ coarse @ up_w.T
        grating = _grating(rng, height, width)
        amplitude = rng.uniform(0.3, 0.7, size=(channels, 1, 1))
        templates[k] = 128.0 + 55.0 * field + 30.0 * amplitude * grating
    return templates


def _render(templates: np.ndarray, labels: np.ndarray, rng: np.random.Generator
            ) -> np.ndarray:
    """Draw noisy, shifted instances of the labelled templates as uint8."""
    n = len(labels)
    _, channels, height, width = templates.shape
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(n, 2))
    contrast = rng.uniform(0.7, 1.3, size=n).astype(np.float32)
    brightness = rng.normal(0.0, 12.0, size=n).astype(np.float32)
    rows = (np.arange(height)[None, :] - shifts[:, :1]) % height
    cols = (np.arange(width)[None, :] - shifts[:, 1:]) % width
    chan = np.arange(channels)[None, :, None, None]
    flat = templates.astype(np.float32)
    out = np.empty((n, channels, height, width), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        s = slice(start, min(start + _CHUNK, n))
        base = flat[labels[s, None, None, None], chan,
                    rows[s, None, :, None], cols[s, None, None, :]]
        noise = rng.standard_normal(base.shape, dtype=np.float32) * NOISE_STD
        img = (base - 128.0) * contrast[s, None, None, None] + 128.0 \
            + brightness[s, None, None, None] + noise
        out[s] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _split(kind: str, templates: np.ndarray, n: int, seed: int, stream: int,
           split: str) -> Dataset:
    """One balanced, shuffled split drawn from its own random stream."""
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)
    return Dataset(images=_render(templates, labels, rng), labels=labels,
                   classes=SYNTHETIC_CLASSES, name=f"synthetic-{kind}-{split}")


def make_synthetic(
    kind: Literal["cifar10", "mnist"] = "cifar10",
    n_train: int = 5000,
    n_test: int = 1000,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """Deterministic (train, test) datasets shaped like ``kind``'s real data."""
    if kind not in SHAPES:
        raise ValueError(f"kind must be one of {sorted(SHAPES)}, got {kind!r}")
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be non-negative")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    templates = make_templates(kind, seed)
    return (
        _split(kind, templates, n_train, seed, _TRAIN_STREAM, "train"),
        _split(kind, templates, n_test, seed, _TEST_STREAM, "test"),
    )
