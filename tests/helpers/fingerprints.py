"""Fingerprints with known densities, for tests of the code that reads them."""

from __future__ import annotations

import numpy as np

from positioning.fingerprint import Fingerprint

FINE_DB = np.arange(-160.0, 0.0 + 1e-9, 0.02)
"""A grid fine enough that linear interpolation of a Gaussian's log is within step² / (8 sd²) of it."""


def gaussian_fingerprint(mean: np.ndarray, sd: np.ndarray, windows: np.ndarray,
                         bandwidth_db: float = 1.0) -> Fingerprint:
    """A fingerprint whose densities (18a) are the Gaussians N(mean, sd²) on FINE_DB (NaN mean: unknown)."""
    logpdf = -0.5 * ((FINE_DB - mean[..., None]) / sd[..., None]) ** 2 - np.log(sd[..., None] * np.sqrt(2 * np.pi))
    return Fingerprint(mean, sd, windows, FINE_DB, logpdf, bandwidth_db)
