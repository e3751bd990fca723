"""Ground truth of a simulated (or surveyed) run: ``truth.jsonl``, one record a line.

Each line carries a ``kind``: the run's header, shoppers, the emitters they
carried (pseudonym and raw identifier, so a privacy test can scan payloads
for the raw ones), positions, sector visits, card taps, passers-by outside
and fixed devices inside (their emitters carry their P-/F- id as owner). Real datasets
converted by ``simulator.datasets`` use the same records, so the report and
the calibration read both alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, RootModel

from agent.observations import Tech
from agent.replayfile import ReadReport, RecordReader

FloatArray = NDArray[np.float64]


class _Truth(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunTruth(_Truth):
    """The header: what was simulated and with which channel, for the report."""

    kind: Literal["run"] = "run"
    store_id: str
    site: str
    seed: int | None = None
    start_ts: float
    end_ts: float
    shoppers: int
    emitter_height_m: float
    sigma_db: float = Field(description="Shadowing spread the Cramér-Rao bound is computed with.")
    receiver_bias_db: dict[str, float] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)


class ShopperTruth(_Truth):
    """One shopper: when they came and left, and whether their phone and loyalty card can be recognised."""

    kind: Literal["shopper"] = "shopper"
    shopper_id: str
    enter_ts: float
    leave_ts: float
    has_app: bool
    loyalty_id: str | None = None


class EmitterTruth(_Truth):
    """One pseudonymous emitter id and the raw identifier and carrier behind it."""

    kind: Literal["emitter"] = "emitter"
    emitter_id: str
    tech: Tech
    raw_id: str
    shopper_id: str
    first_ts: float
    last_ts: float


class PositionTruth(_Truth):
    """Where a shopper really was at ``ts``: the reference the locator's positions are scored against."""

    kind: Literal["position"] = "position"
    ts: float
    shopper_id: str
    x: float
    y: float
    z: float | None = None
    sector: str | None = None


class VisitTruth(_Truth):
    """A stretch of time a shopper spent in one sector (passing through counts)."""

    kind: Literal["visit"] = "visit"
    shopper_id: str
    sector: str
    enter_ts: float
    exit_ts: float


class TapTruth(_Truth):
    """A card tapped on an NFC reader; ``known`` says whether the card belongs to a loyalty customer."""

    kind: Literal["tap"] = "tap"
    ts: float
    shopper_id: str
    reader_id: str
    card_uid: str
    loyalty_id: str | None
    known: bool


class PasserTruth(_Truth):
    """Someone walking past on the pavement outside: never inside, but in the receivers' range a while."""

    kind: Literal["passer"] = "passer"
    passer_id: str
    start_ts: float
    end_ts: float
    transmits: bool = Field(description="Whether the passer's phone sent anything the receivers could hear.")


class FixtureTruth(_Truth):
    """A fixed device inside (PC, printer, till): a device, never a person."""

    kind: Literal["fixture"] = "fixture"
    fixture_id: str
    model: str = Field(description="Its device model in simulator.anonymous.MODELS, which sets what it transmits.")
    x: float
    y: float
    on_ts: float = Field(description="When it started transmitting.")


TruthUnion = Annotated[
    RunTruth | ShopperTruth | EmitterTruth | PositionTruth | VisitTruth | TapTruth | PasserTruth | FixtureTruth,
    Field(discriminator="kind"),
]


class TruthRecord(RootModel[TruthUnion]):
    """Any truth line; ``.root`` is the typed record."""


@dataclass
class Track:
    """A shopper's true positions: ts (n,), xy (n, 2), z (n,) (NaN where not given), sector ids."""

    ts: FloatArray
    xy: FloatArray
    z: FloatArray
    sector: list[str | None]

    def at(self, times: FloatArray) -> FloatArray:
        """Positions (n, 2) linearly interpolated at times (n,)."""
        return np.stack([np.interp(times, self.ts, self.xy[:, 0]), np.interp(times, self.ts, self.xy[:, 1])], axis=-1)


@dataclass
class Truth:
    """A truth file gathered for lookups."""

    run: RunTruth | None = None
    shoppers: dict[str, ShopperTruth] = field(default_factory=dict)
    emitters: dict[str, EmitterTruth] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    visits: dict[str, list[VisitTruth]] = field(default_factory=dict)
    taps: list[TapTruth] = field(default_factory=list)
    passers: dict[str, PasserTruth] = field(default_factory=dict)
    fixtures: dict[str, FixtureTruth] = field(default_factory=dict)
    report: ReadReport = field(default_factory=ReadReport)

    def shopper_of(self, emitter_id: str) -> str | None:
        emitter = self.emitters.get(emitter_id)
        return emitter.shopper_id if emitter is not None else None

    def people_inside(self, times: ArrayLike) -> FloatArray:
        """Shoppers inside (n,) at each of ``times`` (n,): entered at or before, not yet left."""
        at = np.asarray(times, dtype=np.float64).ravel()
        enter = np.sort([s.enter_ts for s in self.shoppers.values()])
        leave = np.sort([s.leave_ts for s in self.shoppers.values()])
        inside = np.searchsorted(enter, at, side="right") - np.searchsorted(leave, at, side="right")
        return inside.astype(np.float64)

    def entries(self, edges: ArrayLike) -> FloatArray:
        """Shoppers entering in each interval [edges_k, edges_k+1) (K,) of ``edges`` (K+1,)."""
        counts, _ = np.histogram([s.enter_ts for s in self.shoppers.values()], bins=np.asarray(edges, dtype=np.float64))
        return counts.astype(np.float64)


@dataclass
class PlannedTruth:
    """What the shoppers of a run will do, in store time (epoch seconds), from `simulator.run.planned_truth`.

    entries: app-phone pseudonym -> (time, sector id) of each step into a
    sector, the first being the arrival; enter, leave (n,) of every shopper.
    """

    entries: dict[str, list[tuple[float, str]]]
    enter: FloatArray
    leave: FloatArray

    def inside(self, at: FloatArray) -> NDArray[np.intp]:
        """Shoppers in the store at each time of ``at``."""
        inside: NDArray[np.intp] = ((self.enter[None, :] <= at[:, None]) & (self.leave[None, :] > at[:, None])).sum(axis=1)
        return inside


def gather(records: Iterable[TruthRecord]) -> Truth:
    """Group truth records by kind; positions become per-shopper arrays sorted by time."""
    truth = Truth()
    positions: dict[str, list[PositionTruth]] = {}
    for line in records:
        record = line.root
        if isinstance(record, RunTruth):
            truth.run = record
        elif isinstance(record, ShopperTruth):
            truth.shoppers[record.shopper_id] = record
        elif isinstance(record, EmitterTruth):
            truth.emitters[record.emitter_id] = record
        elif isinstance(record, PositionTruth):
            positions.setdefault(record.shopper_id, []).append(record)
        elif isinstance(record, VisitTruth):
            truth.visits.setdefault(record.shopper_id, []).append(record)
        elif isinstance(record, PasserTruth):
            truth.passers[record.passer_id] = record
        elif isinstance(record, FixtureTruth):
            truth.fixtures[record.fixture_id] = record
        else:
            truth.taps.append(record)
    for shopper, items in positions.items():
        items.sort(key=lambda p: p.ts)
        truth.tracks[shopper] = Track(
            np.array([p.ts for p in items]),
            np.array([[p.x, p.y] for p in items]),
            np.array([np.nan if p.z is None else p.z for p in items]),
            [p.sector for p in items],
        )
    for visits in truth.visits.values():
        visits.sort(key=lambda v: v.enter_ts)
    return truth


def read_truth(path: Path) -> Truth:
    """Read and gather a truth file; bad lines are counted in ``.report`` and logged."""
    reader = RecordReader(path, TruthRecord)
    truth = gather(reader)
    truth.report = reader.report
    return truth
