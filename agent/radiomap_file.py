"""The radio map file: `santi calibrate fit` writes it beside the site config, ``[tracking] radio_map`` names it.

A NumPy ``.npz`` (no pickles) holding the residual fields of
``positioning.radiomap`` keyed by receiver id, so a site whose receivers
were reordered, added or removed since the walk still lines up: a receiver
the walk did not cover keeps the plain path-loss model, and one the site no
longer has is ignored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agent.errors import InputError
from agent.npzfile import file_version, load_arrays, write_arrays
from positioning.radiomap import RadioMap

FORMAT = "santi.radiomap/1"


class RadioMapFileError(InputError):
    """The file is not a radio map Santi can use; the message is one line."""


@dataclass(frozen=True, eq=False)
class StoredRadioMap:
    """A radio map as stored: the fields, whose rows are `receiver_ids`, and how they were fitted."""

    receiver_ids: tuple[str, ...]
    radio_map: RadioMap
    readings: NDArray[np.int64]
    bandwidth_m: float
    prior_readings: float

    def for_receivers(self, receiver_ids: tuple[str, ...]) -> RadioMap:
        """The fields in the order of a site's receivers; zero (the plain model) for those the walk lacked."""
        if receiver_ids == self.receiver_ids:
            return self.radio_map
        row = {r: i for i, r in enumerate(self.receiver_ids)}
        stored = self.radio_map.values
        values = np.zeros((len(receiver_ids), *stored.shape[1:]))
        for i, receiver in enumerate(receiver_ids):
            if receiver in row:
                values[i] = stored[row[receiver]]
        return RadioMap(self.radio_map.origin, self.radio_map.cell_m, values)


def write_radio_map(path: Path, stored: StoredRadioMap) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    write_arrays(path, FORMAT, {
        "receiver_ids": np.array(stored.receiver_ids, dtype=np.str_),
        "origin": stored.radio_map.origin,
        "cell_m": np.array(stored.radio_map.cell_m),
        "values": stored.radio_map.values.astype(np.float32),
        "readings": stored.readings,
        "bandwidth_m": np.array(stored.bandwidth_m),
        "prior_readings": np.array(stored.prior_readings),
    })


def read_radio_map(path: Path) -> StoredRadioMap:
    """Read and check a radio map file, or raise `RadioMapFileError` saying what is wrong in one line.

    The last file read is kept while it is unchanged on disk: loading a site
    validates its map, and building the tracker's arrays from that site reads
    it again. Its arrays are read-only, as they are shared.
    """
    return _read(path, *file_version(path, RadioMapFileError))


@functools.lru_cache(maxsize=1)
def _read(path: Path, inode: int, mtime_ns: int, size: int) -> StoredRadioMap:
    """`read_radio_map` for one version of the file (the key's inode, time and size name it)."""
    arrays = load_arrays(path, RadioMapFileError, "radio map", FORMAT,
                         ("receiver_ids", "origin", "cell_m", "values", "readings", "bandwidth_m", "prior_readings"))
    ids = tuple(str(r) for r in arrays["receiver_ids"].ravel())
    values = np.asarray(arrays["values"], dtype=np.float64)
    readings = np.asarray(arrays["readings"]).astype(np.int64, copy=False)
    if len(set(ids)) != len(ids) or values.ndim != 3 or values.shape[0] != len(ids) or readings.shape != (len(ids),):
        raise RadioMapFileError(f"{path}: {len(ids)} receiver ids do not match the fields' shape {values.shape}")
    values.flags.writeable = False
    try:
        radio_map = RadioMap(np.asarray(arrays["origin"], dtype=np.float64).ravel(), float(arrays["cell_m"]), values)
        return StoredRadioMap(ids, radio_map, readings, float(arrays["bandwidth_m"]), float(arrays["prior_readings"]))
    except (TypeError, ValueError) as exc:
        raise RadioMapFileError(f"{path}: {exc}") from None
