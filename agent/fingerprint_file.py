"""The sector fingerprint file: `santi calibrate fit` writes it beside the site config, ``[tracking] fingerprint``
names it.

A NumPy ``.npz`` (no pickles) holding eq. (18a)'s densities of
``positioning.fingerprint`` on their dB grid, with each pair's mean and
spread, keyed by sector id and receiver id. A receiver
the walk did not hear is left out of the likelihood; a receiver the site no
longer has is ignored. The sectors must be the site's, all of them: a
fingerprint of other sectors would weigh evidence for the wrong places.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import InputError
from agent.npzfile import file_version, load_arrays, write_arrays
from positioning.fingerprint import Fingerprint

FORMAT = "santi.fingerprint/2"
"""Version 2: kernel densities (18a) on a dB grid; version 1 held one Gaussian per pair (refit it)."""


class FingerprintFileError(InputError):
    """The file is not a fingerprint Santi can use for this site; the message is one line."""


@dataclass(frozen=True, eq=False)
class StoredFingerprint:
    """A fingerprint as stored: rows are `sector_ids`, columns `receiver_ids`."""

    sector_ids: tuple[str, ...]
    receiver_ids: tuple[str, ...]
    fingerprint: Fingerprint

    def for_site(self, path: Path, sector_ids: tuple[str, ...], receiver_ids: tuple[str, ...]) -> Fingerprint:
        """The fingerprint in the site's sector and receiver order, or a one-line error naming `path`.

        Receivers the walk lacked are unknown (NaN); the sectors must match the site's exactly.
        """
        if set(sector_ids) != set(self.sector_ids):
            missing = sorted(set(sector_ids) - set(self.sector_ids))
            extra = sorted(set(self.sector_ids) - set(sector_ids))
            raise FingerprintFileError(
                f"{path}: its sectors do not match the site's (missing {missing or 'none'}, not in the site "
                f"{extra or 'none'}); refit it with santi calibrate fit")
        column = {r: i for i, r in enumerate(self.receiver_ids)}
        if not any(r in column for r in receiver_ids):
            raise FingerprintFileError(f"{path}: none of the site's receivers is in it; refit it with santi "
                                       "calibrate fit")
        rows = [self.sector_ids.index(s) for s in sector_ids]
        stored = self.fingerprint
        mean = np.full((len(sector_ids), len(receiver_ids)), np.nan)
        sd = np.full_like(mean, np.nan)
        logpdf = np.full((*mean.shape, stored.grid_db.size), np.nan)
        for j, receiver in enumerate(receiver_ids):
            if receiver in column:
                mean[:, j] = stored.mean[rows, column[receiver]]
                sd[:, j] = stored.sd[rows, column[receiver]]
                logpdf[:, j] = stored.logpdf[rows, column[receiver]]
        return Fingerprint(mean, sd, stored.windows[rows], stored.grid_db, logpdf, stored.bandwidth_db)


def write_fingerprint(path: Path, stored: StoredFingerprint) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    write_arrays(path, FORMAT, {
        "sector_ids": np.array(stored.sector_ids, dtype=np.str_),
        "receiver_ids": np.array(stored.receiver_ids, dtype=np.str_),
        "mean": stored.fingerprint.mean.astype(np.float32),
        "sd": stored.fingerprint.sd.astype(np.float32),
        "windows": stored.fingerprint.windows,
        "grid_db": stored.fingerprint.grid_db,
        "logpdf": stored.fingerprint.logpdf.astype(np.float32),
        "bandwidth_db": np.array(stored.fingerprint.bandwidth_db),
    })


def read_fingerprint(path: Path) -> StoredFingerprint:
    """Read and check a fingerprint file, or raise `FingerprintFileError` saying what is wrong in one line."""
    return _read(path, *file_version(path, FingerprintFileError))


@functools.lru_cache(maxsize=1)
def _read(path: Path, inode: int, mtime_ns: int, size: int) -> StoredFingerprint:
    """`read_fingerprint` for one version of the file (the key's inode, time and size name it)."""
    arrays = load_arrays(path, FingerprintFileError, "fingerprint", FORMAT,
                         ("sector_ids", "receiver_ids", "mean", "sd", "windows", "grid_db", "logpdf",
                          "bandwidth_db"))
    sectors = tuple(str(s) for s in arrays["sector_ids"].ravel())
    receivers = tuple(str(r) for r in arrays["receiver_ids"].ravel())
    shape = (len(sectors), len(receivers))
    if len(set(sectors)) != len(sectors) or len(set(receivers)) != len(receivers) or \
            arrays["mean"].shape != shape or arrays["sd"].shape != shape:
        raise FingerprintFileError(f"{path}: {len(sectors)} sector and {len(receivers)} receiver ids do not "
                                   f"match the arrays' shape {arrays['mean'].shape}")
    try:
        fingerprint = Fingerprint(np.asarray(arrays["mean"], dtype=np.float64),
                                  np.asarray(arrays["sd"], dtype=np.float64),
                                  np.asarray(arrays["windows"]).astype(np.int64).ravel(),
                                  np.asarray(arrays["grid_db"], dtype=np.float64).ravel(),
                                  np.asarray(arrays["logpdf"], dtype=np.float64),
                                  float(np.asarray(arrays["bandwidth_db"], dtype=np.float64)))
    except (TypeError, ValueError) as exc:
        raise FingerprintFileError(f"{path}: {exc}") from None
    return StoredFingerprint(sectors, receivers, fingerprint)
