"""One window of observations and taps in, presence events out.

The locator is the pure middle of the agent: it owns the tracker, the sector
filters, the presence state machine and the tap linker, and is stepped with
the window's time by the service (or by a replay, as fast as it can read).
It never reads a clock or touches I/O, so the service, the demo and the
tests drive exactly the same code.

Anyone in the street can advertise, so the number of emitters is bounded
here: ``[tracking] max_emitters`` tracks at once, readings of new emitters
beyond it dropped as ``emitter_cap`` (counted, logged once a minute of
window time). Tracks that expire give their memory back (the tracker
shrinks its arrays, the per-emitter maps are rebuilt, the allocator is
asked to return its free pages), so RSS returns after a flood.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.config import SiteConfig
from agent.events import CardTapped, Event, IdentityLinked
from agent.identity import LinkParams, best_link, tap_probabilities
from agent.memory import release_free_memory
from agent.observations import CardTap, Observation, Reading, Tech
from agent.presence import Located, Presence
from agent.ratelimit import Throttle
from agent.site_arrays import (
    OUTSIDE,
    make_sector_model,
    make_sector_tracker,
    make_tracker,
    site_arrays,
)
from positioning.sectors import SectorUpdate

log = logging.getLogger(__name__)

COMPACT_AFTER = 1024
"""Expired emitters in one window after which the per-emitter maps are rebuilt (dicts never shrink by deletion)."""


@dataclass
class LocatorStats:
    """Counters for ``agent.status``: what went into the math and what was dropped."""

    observations: int = 0
    taps: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    per_receiver: Counter[str] = field(default_factory=Counter)
    """Readings per known receiver, for the console's readings/s."""
    last_heard: dict[str, float] = field(default_factory=dict)
    """Window time each receiver was last heard in, for the console's health colours."""

    def status_line(self) -> dict[str, object]:
        """The locator as a line of the status file's sources, so ``santi status`` shows its drops by reason."""
        return {"state": "up", "accepted": self.observations, "rate_per_s": None,
                "dropped": dict(self.dropped), "last_error": None}


class Locator:
    """Tracker + sector model + presence + identity for one store."""

    def __init__(self, site: SiteConfig, *, link_params: LinkParams | None = None) -> None:
        self.site = site
        self.arrays = site_arrays(site)
        self.tracker = make_tracker(site, self.arrays)
        self.sectors = make_sector_tracker(site, self.arrays, make_sector_model(self.arrays))
        self.presence = Presence(
            site.store.id,
            site.agent.id,
            entrances=[s.id for s in site.sectors if s.entrance],
            visit_silence_s=site.tracking.visit_silence_s,
        )
        self.link_params = link_params or LinkParams()
        xy = np.asarray(site.store.outline, dtype=np.float64)
        self.store_area_m2 = float(0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1))))
        self.readers = {r.id: np.array([r.x, r.y]) for r in site.nfc_readers}
        self.app_beacons: dict[str, str] = {}
        self._app_linked: set[str] = set()
        self._tech: dict[str, Tech] = {}
        self.stats = LocatorStats()
        self._throttle = Throttle()

    def reconfigured(self, site: SiteConfig) -> Locator:
        """A locator for a reloaded site config that keeps what still makes sense.

        Open visits always survive (a reload must not split a visit in two);
        a visit whose current sector is gone is simply out of any sector
        until the model reports the next one. Tracks and sector filters
        survive when the receivers and sectors are unchanged.
        """
        new = Locator(site, link_params=self.link_params)
        new.presence.visits = self.presence.visits
        known = {sector.id for sector in site.sectors}
        for visit in new.presence.visits.values():
            if visit.sector_id is not None and visit.sector_id not in known:
                visit.sector_id = None
        same_receivers = [r.model_dump() for r in site.receivers] == [r.model_dump() for r in self.site.receivers]
        same_sectors = [s.model_dump() for s in site.sectors] == [s.model_dump() for s in self.site.sectors]
        if same_receivers and site.tracking == self.site.tracking and site.store == self.site.store:
            new.tracker = self.tracker
            if same_sectors:
                new.sectors = self.sectors
        new.app_beacons = self.app_beacons
        new._app_linked = self._app_linked
        new._tech = self._tech
        new.stats = self.stats
        new._throttle = self._throttle
        return new

    def register_app_beacon(self, emitter_id: str, loyalty_id: str) -> None:
        """The loyalty app advertised this emitter: its visit links at once."""
        self.app_beacons[emitter_id] = loyalty_id

    def window(
        self, t: float, observations: Sequence[Reading | Observation], taps: Sequence[CardTap] = (),
        *, wall_offset: float = 0.0,
    ) -> list[Event]:
        """Events of the window ending at ``t`` (steady time), dated ``t + wall_offset`` (wall time)."""
        self.presence.wall_offset = wall_offset
        events: list[Event] = []
        rows = self.arrays.receiver_row
        ids: list[str] = []
        receiver_index: list[int] = []
        rssi: list[float] = []
        techs: list[Tech] = []
        for obs in observations:
            row = rows.get(obs.receiver_id)
            if row is None:
                self._drop("unknown_receiver", t, obs.receiver_id)
                continue
            ids.append(obs.emitter_id)
            receiver_index.append(row)
            rssi.append(obs.rssi_dbm)
            techs.append(obs.tech)
        if len(self.tracker) + len(set(ids)) > self.site.tracking.max_emitters:
            ids, receiver_index, rssi, techs = self._admit(t, ids, receiver_index, rssi, techs)
        self._tech.update(zip(ids, techs, strict=True))
        self.stats.observations += len(ids)
        self._count_receivers(t, receiver_index)
        if ids:
            heard_by, levels = np.array(receiver_index), np.array(rssi)
            snapshot = self.tracker.step(t, ids, heard_by, levels)
            update = self.sectors.step(t, list(snapshot.emitter_ids), snapshot.xy, snapshot.cov,
                                       (snapshot.reading_track, heard_by, levels))
            located = []
            for emitter, sector, probability, since in zip(
                snapshot.emitter_ids, update.sector.tolist(), update.probability.tolist(),
                update.entered_at.tolist(), strict=True,
            ):
                name = self.arrays.sector_name(sector)
                if name is None:
                    continue
                located.append(Located(emitter, self._tech.get(emitter, "ble"),
                                       None if name == OUTSIDE else name, probability, since))
            events.extend(self.presence.update(t, located))
            if log.isEnabledFor(logging.DEBUG):
                self._log_entries(t, snapshot.emitter_ids, update)
        for emitter, visit in self.presence.visits.items():
            if emitter in self.app_beacons and visit.visit_id not in self._app_linked:
                self._app_linked.add(visit.visit_id)
                events.append(self._app_link(t, emitter))
        for tap in taps:
            events.extend(self._tap(tap))
        dead = self.tracker.expire(t)
        if dead:
            self.sectors.forget(dead)
        events.extend(self.presence.expire(t))
        for emitter in dead:
            if emitter not in self.presence.visits:
                self._tech.pop(emitter, None)
                self.app_beacons.pop(emitter, None)
        if len(dead) >= COMPACT_AFTER:
            self._tech = dict(self._tech)
            self.app_beacons = dict(self.app_beacons)
            release_free_memory()
        open_visits = {visit.visit_id for visit in self.presence.visits.values()}
        self._app_linked &= open_visits
        return events

    def _admit(
        self, t: float, ids: list[str], receiver_index: list[int], rssi: list[float], techs: list[Tech]
    ) -> tuple[list[str], list[int], list[float], list[Tech]]:
        """The readings of tracked emitters and of as many new ones as ``max_emitters`` leaves room for."""
        room = self.site.tracking.max_emitters - len(self.tracker)
        admitted: dict[str, bool] = {}
        keep: list[bool] = []
        for emitter in ids:
            ok = admitted.get(emitter)
            if ok is None:
                ok = emitter in self.tracker or room > 0
                if ok and emitter not in self.tracker:
                    room -= 1
                admitted[emitter] = ok
            keep.append(ok)
        refused = keep.count(False)
        if refused:
            self._drop("emitter_cap", t, f"{sum(not ok for ok in admitted.values())} new emitters",
                       count=refused)
        return ([e for e, ok in zip(ids, keep, strict=True) if ok],
                [r for r, ok in zip(receiver_index, keep, strict=True) if ok],
                [v for v, ok in zip(rssi, keep, strict=True) if ok],
                [k for k, ok in zip(techs, keep, strict=True) if ok])

    def _drop(self, reason: str, t: float, what: str, count: int = 1) -> None:
        """Count dropped readings; warn once per reason per minute of window time, with the count held back."""
        self.stats.dropped[reason] += count
        held = self._throttle.allow(reason, t)
        if held is not None:
            log.warning("readings dropped by the locator", extra={
                "reason": reason, "what": what[:100], "count": count, "similar_since_last": held,
                "max_emitters": self.site.tracking.max_emitters, "tracks": len(self.tracker)})
    def _count_receivers(self, t: float, receiver_index: list[int]) -> None:
        """Per-receiver counts by one bincount, not a dict update per reading (the hot loop)."""
        if not receiver_index:
            return
        heard = np.bincount(receiver_index, minlength=len(self.arrays.receiver_ids))
        for row in np.flatnonzero(heard).tolist():
            receiver = self.arrays.receiver_ids[row]
            self.stats.per_receiver[receiver] += int(heard[row])
            self.stats.last_heard[receiver] = t

    def _log_entries(self, t: float, emitter_ids: Sequence[str], update: SectorUpdate) -> None:
        """Each sector entry's timeline, for whoever asks why HQ heard of it late.

        crossed (the event's ts) -> qualified (the estimate was clearly in the
        sector: the positioning's share) -> decided (the hold completed: the
        hysteresis's share); the time after ``decided`` is the pipeline's.
        """
        for i in np.flatnonzero(update.entered >= 0).tolist():
            visit = self.presence.visits.get(emitter_ids[i])
            name = self.arrays.sector_name(int(update.entered[i]))
            if visit is None or name is None or name == OUTSIDE:
                continue
            log.debug("sector decided", extra={
                "subject": visit.subject, "sector": name, "crossed": round(float(update.entered_at[i]), 3),
                "qualified": round(float(update.qualified_at[i]), 3), "decided": round(t, 3),
            })

    def close(self, t: float) -> list[Event]:
        """End every open visit (the agent is shutting down)."""
        return self.presence.close_all(t, "shutdown")

    def _app_link(self, t: float, emitter: str) -> Event:
        visit = self.presence.visits[emitter]
        return IdentityLinked(**self.presence.envelope(t, visit.subject), visit_id=visit.visit_id,
                              loyalty_id=self.app_beacons[emitter], method="app_beacon", confidence=1.0)

    def _tap(self, tap: CardTap) -> list[Event]:
        reader = self.readers.get(tap.reader_id)
        if reader is None:
            self.stats.dropped["unknown_reader"] += 1
            log.warning("card tap at an unknown reader dropped", extra={"reader": tap.reader_id})
            return []
        self.stats.taps += 1
        snapshot = self.tracker.snapshot()
        visits = self.presence.visits
        rows = [i for i, emitter in enumerate(snapshot.emitter_ids) if emitter in visits]
        index: int | None = None
        confidence = 0.0
        if tap.known and rows:
            picked = np.array(rows)
            probabilities = tap_probabilities(
                reader, snapshot.xy[picked], snapshot.cov[picked],
                tap.ts - snapshot.last_seen[picked], self.store_area_m2, self.link_params,
            )
            best, confidence = best_link(probabilities, self.link_params)
            index = None if best is None else rows[best]
        events: list[Event] = []
        subject = tap.card
        if index is not None:
            visit = visits[snapshot.emitter_ids[index]]
            subject = visit.subject
            events.append(IdentityLinked(**self.presence.envelope(tap.ts, subject), visit_id=visit.visit_id,
                                         loyalty_id=tap.card, method="card_tap",
                                         confidence=round(confidence, 4), reader_id=tap.reader_id))
        events.append(CardTapped(**self.presence.envelope(tap.ts, subject), reader_id=tap.reader_id,
                                 card=tap.card, known=tap.known, linked=index is not None))
        return events

