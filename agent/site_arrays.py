"""The site config as the stacked arrays the positioning core takes.

``positioning/`` knows nothing of TOML or ids: it wants receiver rows, sector
polygons and an adjacency matrix. This is the one place that turns a
``SiteConfig`` into those arrays, so the locator service, the simulator and
the benchmarks agree on which row is which receiver and which index is which
sector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from agent.config import ConfigError, SiteConfig, site_fingerprint
from agent.fingerprint_file import FingerprintFileError
from agent.radiomap_file import RadioMapFileError, read_radio_map
from positioning.fingerprint import Fingerprint
from positioning.geometry import LabelRaster
from positioning.gridfilter import GRID_FILTER_CELL_M, GridFilter
from positioning.occupancy import Outline
from positioning.pathloss import Receivers
from positioning.radiomap import RadioMap
from positioning.sectors import SectorModel, SectorTracker
from positioning.stillgrid import SEGMENT_CORRELATION, STILL_GRID_CELL_M, StillGrid, cell_centres
from positioning.tracker import Tracker, TrackerConfig

FloatArray = NDArray[np.float64]

OUTSIDE = "outside"
"""Sector id reported for an estimate beyond every sector polygon."""


@dataclass(frozen=True, eq=False)
class SiteArrays:
    """Receivers and sectors of a site, row-aligned with the core's arrays.

    xyz (m, 3) metres; rssi_at_1m, exponent, sigma_db (m,); kinds (m,) the
    receiver kind; polygons S arrays (n_i, 2); adjacency (S, S) bool;
    entrances (S,) bool; bbox ((x_min, y_min), (x_max, y_max)) of the outline;
    radio_map the residual fields of ``[tracking] radio_map`` in receiver order, if set;
    fingerprint the sector signatures of ``[tracking] fingerprint`` in sector and receiver order, if set.
    """

    receiver_ids: tuple[str, ...]
    kinds: tuple[str, ...]
    xyz: FloatArray
    rssi_at_1m: FloatArray
    exponent: FloatArray
    sigma_db: FloatArray
    sector_ids: tuple[str, ...]
    polygons: tuple[FloatArray, ...]
    adjacency: NDArray[np.bool_]
    entrances: NDArray[np.bool_]
    bbox: FloatArray
    receiver_row: dict[str, int] = field(default_factory=dict)
    radio_map: RadioMap | None = None
    fingerprint: Fingerprint | None = None

    def sector_name(self, index: int) -> str | None:
        """Sector id of a core sector index: None before the first report, 'outside' beyond all."""
        if index < 0:
            return None
        if index >= len(self.sector_ids):
            return OUTSIDE
        return self.sector_ids[index]


def site_arrays(site: SiteConfig) -> SiteArrays:
    """Stack a validated site config into the core's arrays."""
    receivers = site.receivers
    xyz = np.array([[r.x, r.y, r.z] for r in receivers], dtype=np.float64)
    outline = np.asarray(site.store.outline, dtype=np.float64)
    index = site.sector_index()
    s = len(site.sectors)
    adjacency = np.zeros((s, s), dtype=bool)
    for i, neighbours in enumerate(site.adjacency()):
        for other in neighbours:
            adjacency[i, index[other]] = True
    return SiteArrays(
        receiver_ids=tuple(r.id for r in receivers),
        kinds=tuple(r.kind for r in receivers),
        xyz=xyz,
        rssi_at_1m=np.array([r.rssi_at_1m for r in receivers], dtype=np.float64),
        exponent=np.array([r.path_loss_exponent for r in receivers], dtype=np.float64),
        sigma_db=np.array([r.noise_sigma_db for r in receivers], dtype=np.float64),
        sector_ids=tuple(sector.id for sector in site.sectors),
        polygons=tuple(np.asarray(sector.polygon, dtype=np.float64) for sector in site.sectors),
        adjacency=adjacency,
        entrances=np.array([sector.entrance for sector in site.sectors], dtype=bool),
        bbox=np.stack([outline.min(axis=0), outline.max(axis=0)]),
        receiver_row={r.id: row for row, r in enumerate(receivers)},
        radio_map=_radio_map(site),
        fingerprint=_fingerprint(site),
    )


def occupancy_outline(site: SiteConfig, wall_loss_db: float) -> Outline:
    """The counting stage's grid of eq. (41): receivers in site order (the stage's receiver codes), the outline, the
    sectors, and what the outer wall takes from the street."""
    arrays = site_arrays(site)
    return Outline.of(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.sigma_db, site.store.outline,
                      arrays.polygons, wall_loss_db=wall_loss_db)


def _fingerprint(site: SiteConfig) -> Fingerprint | None:
    try:
        return site_fingerprint(site)
    except FingerprintFileError as exc:
        raise ConfigError(f"{site.path}: tracking.fingerprint: {exc}") from None


def _radio_map(site: SiteConfig) -> RadioMap | None:
    if site.tracking.radio_map is None:
        return None
    try:
        stored = read_radio_map(site.tracking.radio_map)
    except RadioMapFileError as exc:
        raise ConfigError(f"{site.path}: tracking.radio_map: {exc}") from None
    return stored.for_receivers(tuple(r.id for r in site.receivers))


def make_tracker(site: SiteConfig, arrays: SiteArrays, config: TrackerConfig | None = None) -> Tracker:
    """A tracker over the site's receivers; the site's tracking section sets height and silence."""
    if config is None:
        config = TrackerConfig(
            emitter_z=site.tracking.emitter_height_m, max_silence_s=site.tracking.track_silence_s,
            offset_sigma_db=site.tracking.phone_offset_db, body_loss_db=site.tracking.body_loss_db,
            body_hold_s=site.tracking.body_hold_s, still_grid_s=site.tracking.still_grid_s,
            grid_motion_m=site.tracking.grid_motion_m, grid_sigma_db=site.tracking.grid_sigma_db,
        )
    return Tracker(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.sigma_db, arrays.bbox, config,
                   arrays.radio_map, still_grid(arrays, config), grid_filter(arrays, config))


def still_grid(arrays: SiteArrays, config: TrackerConfig) -> StillGrid | None:
    """The grid of eqs. (43)-(47) over the site's sectors, with its fingerprint if it has one; None where it is off.

    Its facings expect the tracker's body loss, and its offsets the tracker's spread of phones.
    """
    if config.still_grid_s <= 0.0:
        return None
    return _store_grid(arrays, config, STILL_GRID_CELL_M, arrays.fingerprint)


def grid_filter(arrays: SiteArrays, config: TrackerConfig, receivers: Receivers | None = None) -> GridFilter | None:
    """The filter of eqs. (51)-(57) over the site's sectors; None where it is off.

    Its cells weigh one window each (no segment to share shadowing over), with the tracker's body loss, phones'
    spread and the grid's own reading spread. The fingerprint stays with the sector filter: added to every window
    of the grid as well, it counts the walk twice and pulls shoppers into the sectors it knows best
    (benchmarks/README.md, 2026-12-06, "A grid for every shopper"). `receivers` other than the site's (a
    calibration's held-out check) replace its models and map.
    """
    if config.grid_motion_m <= 0.0:
        return None
    grid = _store_grid(arrays, config, GRID_FILTER_CELL_M, None, segment_correlation=0.0,
                       sigma_db=config.grid_sigma_db, receivers=receivers)
    return GridFilter.over(grid, arrays.bbox, config.grid_motion_m, offset_drift_db=config.offset_drift_db)


def _store_grid(arrays: SiteArrays, config: TrackerConfig, cell_m: float, fingerprint: Fingerprint | None,
                segment_correlation: float = SEGMENT_CORRELATION, sigma_db: float = 0.0,
                receivers: Receivers | None = None) -> StillGrid:
    """The cells of the site's sectors, `cell_m` apart, with the models and the map, and `fingerprint` if any."""
    if receivers is None:
        receivers = Receivers.of(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.sigma_db, arrays.radio_map)
    raster = LabelRaster.build(arrays.polygons, cell_m / 2.0, 0.0)
    sector = raster.lookup(cell_centres(arrays.bbox, cell_m))
    return StillGrid.of(receivers, arrays.bbox, cell_m=cell_m, body_loss_db=config.body_loss_db,
                        offset_sigma_db=config.offset_sigma_db, emitter_z=config.emitter_z,
                        inside=np.where(sector < raster.outside, sector, -1), fingerprint=fingerprint,
                        segment_correlation=segment_correlation, sigma_db=sigma_db)


def make_sector_model(arrays: SiteArrays, *, mean_dwell_s: float = 10.0) -> SectorModel:
    """The site's sector polygons and adjacency as the core's HMM."""
    return SectorModel(arrays.polygons, arrays.adjacency, arrays.entrances, mean_dwell_s=mean_dwell_s)


def make_sector_tracker(site: SiteConfig, arrays: SiteArrays, model: SectorModel) -> SectorTracker:
    """Per-emitter sector filters with the site's threshold and hysteresis, and its fingerprint if it has one.

    The fingerprint forgives phones' offsets as the tracker does, by ``[tracking] phone_offset_db``.
    """
    return SectorTracker(model, threshold=site.tracking.sector_threshold, hold_s=site.tracking.hysteresis_s,
                         walk_m=site.tracking.sector_walk_m, fingerprint=arrays.fingerprint, offset_sigma_db=site.tracking.phone_offset_db)
