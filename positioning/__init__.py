"""Santi's pure positioning core: RSSI in, positions and sectors out.

NumPy and SciPy only: no I/O, no clocks, no imports from the rest of Santi.
Every function takes the time it needs as an argument.

- `pathloss`: the log-distance radio model and its robust calibration.
- `multilaterate`: a snapshot fix from one set of readings (and the baseline).
- `tracker`: a batched constant-velocity EKF per emitter fed RSSI directly.
- `sectors`: sector probabilities, an HMM over the adjacency graph, hysteresis.
- `bounds`: the Cramér-Rao lower bound of a receiver layout.
"""

from positioning.bounds import crlb_rmse, fisher_information
from positioning.multilaterate import Fix, fix
from positioning.pathloss import Calibration, Receivers, fit_calibration, rssi_at_distance
from positioning.sectors import HmmState, SectorModel, SectorTracker, SectorUpdate, hmm_step
from positioning.tracker import Tracker, TrackerConfig, TrackSnapshot, predict, update

__all__ = [
    "Calibration",
    "Fix",
    "HmmState",
    "Receivers",
    "SectorModel",
    "SectorTracker",
    "SectorUpdate",
    "TrackSnapshot",
    "Tracker",
    "TrackerConfig",
    "crlb_rmse",
    "fisher_information",
    "fit_calibration",
    "fix",
    "hmm_step",
    "predict",
    "rssi_at_distance",
    "update",
]
