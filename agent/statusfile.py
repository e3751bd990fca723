"""What ``santi status`` knows about the agent: its status file and its outbox, read without touching either.

The daemon rewrites ``state_dir/status.json`` every few seconds and once more
at exit (atomically, by rename). So the file's *age* says whether an agent is
alive: older than ``STALE_AFTER_S`` means it died or hangs. Its own
``updated`` field is the agent's clock, which is the replay's clock in a demo,
so age is taken from the file's modification time instead. A clean exit
leaves the uplink ``stopped`` in the last write, which tells "stopped" from
"crashed" at once.

The outbox is read through a separate read-only SQLite connection: a status
command must never create, lock, migrate or move aside the file the agent is
writing (``Outbox.open`` may do all four). Its counters are fresher than the
status file and still readable after the agent stopped, which is exactly
when a technician asks how much is waiting. Where HQ's acknowledgement
stands (acked seq, rows the broker took that HQ has not acknowledged, how
long the oldest has waited) comes from the outbox too; the ack mode and the
counters of unusable acks come from the status file.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

STATUS_FILE = "status.json"
OUTBOX_FILE = "outbox.sqlite"

STALE_AFTER_S = 15.0
"""Three missed refreshes (the daemon writes every 5 s): the agent is gone or stuck."""

LAST_EVENTS = 5
"""Newest stored events shown: enough to see what the agent is doing, short enough to read at a glance."""

AgentState = Literal["online", "degraded", "stale", "stopped", "not running"]

HEALTHY_UPLINK = ("online", "connecting")


@dataclass(frozen=True)
class SourceLine:
    """One source of the running agent, as the status file reports it."""

    name: str
    state: str
    accepted: int
    rate_per_s: float | None
    rate_is_mean: bool
    """True when the file carried no recent rate and ``rate_per_s`` is the mean since start."""
    dropped: int
    last_error: str | None
    dropped_by_reason: tuple[tuple[str, int], ...] = ()
    """The drops by reason, most frequent first, when the file names reasons."""


@dataclass(frozen=True)
class EventLine:
    """One stored event, reduced to what a technician reads: never a payload dump."""

    seq: int
    type: str
    ts: float
    subject: str
    detail: str


@dataclass(frozen=True)
class OutboxView:
    depth: int
    oldest_ts: float | None
    last_seq: int
    evicted_total: int
    newest: tuple[EventLine, ...]
    epoch: str | None = None
    acked_seq: int = 0
    """The highest seq HQ has acknowledged in this epoch."""
    sent_unacked: int = 0
    """Rows the broker PUBACKed that HQ has not acknowledged yet."""
    oldest_sent_at: float | None = None
    """Wall time the oldest of those was first sent."""


@dataclass(frozen=True)
class FootfallLine:
    """The counting stage as the running agent reported it: its last count, the window it holds, its CPU."""

    count: float | None
    count_sd: float | None
    at: float | None
    held: int
    max_probes: int
    estimates: int
    cpu_s_last: float | None
    span_s: float | None = None
    """How far back the held receptions reached at the last estimate (less than the window when max_probes bit)."""

    @classmethod
    def of(cls, data: Any) -> FootfallLine | None:
        if not isinstance(data, dict):
            return None
        return cls(count=_number(data.get("count")), count_sd=_number(data.get("count_sd")),
                   at=_number(data.get("at")), held=_count(data.get("held")),
                   max_probes=_count(data.get("max_probes")), estimates=_count(data.get("estimates")),
                   cpu_s_last=_number(data.get("cpu_s_last")), span_s=_number(data.get("span_s")))

    def text(self) -> str:
        """One line: ``12.3 ± 1.8 inside at 09:14:00 UTC; 41,200 of 500,000 probes held; last estimate 45 ms CPU``."""
        count = ("no count yet" if self.count is None or self.at is None else
                 f"{self.count:.1f} ± {self.count_sd or 0.0:.1f} inside at {utc_text(self.at)}")
        cpu = "" if self.cpu_s_last is None else f"; last estimate {self.cpu_s_last * 1000:.0f} ms CPU"
        reach = "" if not self.span_s else f" (reaching back {duration(self.span_s)})"
        return f"{count}; {self.held:,} of {self.max_probes:,} probes held{reach}{cpu}"


@dataclass(frozen=True)
class AckLine:
    """The acknowledgement mode and its trouble counters, as the running agent reported them."""

    mode: str
    resent: int
    dropped: int
    """Messages on the ack topic that were not a usable ack, plus acks for another epoch or an unassigned seq."""


@dataclass(frozen=True)
class StatusReport:
    """Everything ``santi status`` prints; ``state`` drives its exit code."""

    state_dir: Path
    state: AgentState
    reason: str
    file_age_s: float | None
    store_id: str | None = None
    agent_id: str | None = None
    pid: int | None = None
    uptime_s: float | None = None
    uplink_state: str | None = None
    uplink_error: str | None = None
    outbox: OutboxView | None = None
    outbox_error: str | None = None
    sources: tuple[SourceLine, ...] = ()
    tracks: int | None = None
    visits: int | None = None
    queue_dropped: int = 0
    ack: AckLine | None = None
    footfall: FootfallLine | None = None
    recent_events: tuple[EventLine, ...] = field(default=())
    """The agent's own list of its latest events (delivered ones too), when its status file carries one."""

    @property
    def running(self) -> bool:
        return self.state in ("online", "degraded")

    def to_dict(self) -> dict[str, Any]:
        outbox = None if self.outbox is None else {
            "depth": self.outbox.depth, "oldest_ts": self.outbox.oldest_ts, "last_seq": self.outbox.last_seq,
            "evicted_total": self.outbox.evicted_total, "newest": [_event_dict(e) for e in self.outbox.newest],
            "epoch": self.outbox.epoch, "acked_seq": self.outbox.acked_seq, "sent_unacked": self.outbox.sent_unacked,
            "oldest_sent_at": self.outbox.oldest_sent_at,
        }
        ack = None if self.ack is None else {"mode": self.ack.mode, "resent": self.ack.resent,
                                             "dropped": self.ack.dropped}
        return {
            "state_dir": str(self.state_dir), "state": self.state, "running": self.running, "reason": self.reason,
            "status_file_age_s": self.file_age_s, "store_id": self.store_id, "agent_id": self.agent_id,
            "uptime_s": self.uptime_s, "uplink": {"state": self.uplink_state, "last_error": self.uplink_error},
            "outbox": outbox, "outbox_error": self.outbox_error,
            "sources": [{"name": s.name, "state": s.state, "accepted": s.accepted, "rate_per_s": s.rate_per_s,
                         "rate_is_mean": s.rate_is_mean, "dropped": s.dropped,
                         "dropped_by_reason": dict(s.dropped_by_reason), "last_error": s.last_error}
                        for s in self.sources],
            "tracks": self.tracks, "visits": self.visits, "queue_dropped": self.queue_dropped, "ack": ack,
            "footfall": None if self.footfall is None else {
                "count": self.footfall.count, "count_sd": self.footfall.count_sd, "at": self.footfall.at,
                "held": self.footfall.held, "max_probes": self.footfall.max_probes,
                "estimates": self.footfall.estimates, "cpu_s_last": self.footfall.cpu_s_last,
                "span_s": self.footfall.span_s},
            "recent_events": [_event_dict(e) for e in self.recent_events],
        }


def _event_dict(event: EventLine) -> dict[str, Any]:
    return {"seq": event.seq, "type": event.type, "ts": event.ts, "subject": event.subject, "detail": event.detail}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def event_line(seq: int, payload: dict[str, Any], fallback_ts: float) -> EventLine:
    """The readable gist of one event's JSON: its type, time, subject and the field that matters for its type."""
    kind = str(payload.get("type", "?"))
    ts = fallback_ts
    if isinstance(payload.get("ts"), str):
        try:
            ts = datetime.fromisoformat(payload["ts"]).timestamp()
        except ValueError:
            ts = fallback_ts
    detail = ""
    if kind in ("sector.entered", "sector.exited"):
        detail = str(payload.get("sector_id", ""))
        if kind == "sector.exited" and isinstance(payload.get("dwell_s"), int | float):
            detail += f" after {payload['dwell_s']:.0f} s"
    elif kind == "visit.ended" and isinstance(payload.get("duration_s"), int | float):
        detail = f"{payload['duration_s']:.0f} s"
    elif kind == "agent.status":
        detail = f"{payload.get('state', '?')}, outbox {payload.get('outbox_depth', '?')}"
    elif kind in ("identity.linked", "card.tapped"):
        detail = str(payload.get("method", payload.get("reader_id", "")))
    elif kind in ("occupancy.sampled", "footfall.counted"):
        field, what = ("count", "inside") if kind == "occupancy.sampled" else ("entries", "entered")
        if isinstance(payload.get(field), int | float) and isinstance(payload.get(f"{field}_sd"), int | float):
            detail = f"{payload[field]:.1f} ± {payload[f'{field}_sd']:.1f} {what}"
    return EventLine(seq=seq, type=kind, ts=ts, subject=str(payload.get("subject", "")), detail=detail)


def read_outbox(path: Path, newest: int = LAST_EVENTS) -> OutboxView:
    """Counters and newest rows of the outbox at ``path``, read-only; raises ``sqlite3.Error`` or ``OSError``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no outbox yet")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    try:
        state = db.execute("SELECT last_seq, rows, evicted_total FROM state WHERE id = 1").fetchone()
        if state is None:
            raise sqlite3.DatabaseError("outbox has no state row")
        oldest = db.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
        rows = db.execute("SELECT seq, payload, ts FROM outbox ORDER BY seq DESC LIMIT ?", (newest,)).fetchall()
        ack = _ack_figures(db)
    finally:
        db.close()
    lines = []
    for seq, payload, ts in rows:
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            data = {}
        lines.append(event_line(int(seq), data if isinstance(data, dict) else {}, float(ts)))
    return OutboxView(depth=int(state[1]), oldest_ts=None if oldest is None else float(oldest[0]),
                      last_seq=int(state[0]), evicted_total=int(state[2]), newest=tuple(lines), **ack)


def _ack_figures(db: sqlite3.Connection) -> dict[str, Any]:
    """Epoch, acked seq and the sent-but-unacknowledged rows; nothing for a file no ack-aware agent has opened."""
    if "sent_at" not in {row[1] for row in db.execute("PRAGMA table_info(outbox)")}:
        return {}
    epoch, acked_seq = db.execute("SELECT epoch, acked_seq FROM state WHERE id = 1").fetchone()
    count, oldest = db.execute("SELECT count(*), min(first_sent_at) FROM outbox WHERE sent_at IS NOT NULL").fetchone()
    return {"epoch": epoch, "acked_seq": int(acked_seq), "sent_unacked": int(count),
            "oldest_sent_at": None if oldest is None else float(oldest)}


def _ack_line(uplink: dict[str, Any]) -> AckLine | None:
    raw = uplink.get("ack")
    if not isinstance(raw, dict) or not isinstance(raw.get("ack_mode"), str):
        return None
    dropped = sum(_count(v) for key in ("acks_dropped", "acks_ignored")
                  if isinstance(raw.get(key), dict) for v in raw[key].values())
    return AckLine(mode=raw["ack_mode"], resent=_count(raw.get("resent")), dropped=dropped)


def _sources(data: dict[str, Any], uptime_s: float | None) -> tuple[SourceLine, ...]:
    raw = data.get("sources")
    if not isinstance(raw, dict):
        return ()
    lines = []
    for name, info in sorted(raw.items()):
        if not isinstance(info, dict):
            continue
        accepted = _count(info.get("accepted"))
        rate = _number(info.get("rate_per_s"))
        mean = rate is None
        if mean and uptime_s is not None and uptime_s > 0:
            rate = accepted / uptime_s
        dropped = info.get("dropped")
        reasons = sorted(((str(k), _count(v)) for k, v in dropped.items() if _count(v)),
                         key=lambda item: (-item[1], item[0])) if isinstance(dropped, dict) else []
        total_dropped = sum(n for _, n in reasons) if isinstance(dropped, dict) else _count(dropped)
        error = info.get("last_error")
        lines.append(SourceLine(name=str(name), state=str(info.get("state", "?")), accepted=accepted, rate_per_s=rate,
                                rate_is_mean=mean, dropped=total_dropped,
                                last_error=error if isinstance(error, str) else None,
                                dropped_by_reason=tuple(reasons)))
    return tuple(lines)


def _recent(data: dict[str, Any]) -> tuple[EventLine, ...]:
    raw = data.get("last_events")
    if not isinstance(raw, list):
        return ()
    return tuple(event_line(_count(item.get("seq")), item, 0.0) for item in raw if isinstance(item, dict))


def classify(data: dict[str, Any] | None, age_s: float | None, stale_after_s: float = STALE_AFTER_S
             ) -> tuple[AgentState, str]:
    """The agent's state from its last status write and that write's age, with the reason in words."""
    if data is None or age_s is None:
        return "not running", "no status file: the agent has not run with this state directory"
    uplink = data.get("uplink")
    uplink_state = uplink.get("state") if isinstance(uplink, dict) else None
    if uplink_state == "stopped":
        return "stopped", f"the agent stopped cleanly {_ago(age_s)}"
    if age_s > stale_after_s:
        return "stale", f"agent not running: last status {_ago(age_s)} (expected every 5 s); crashed or hung?"
    sources = data.get("sources")
    states = {str(name): str(info.get("state", "?")) for name, info in sources.items()
              if isinstance(info, dict)} if isinstance(sources, dict) else {}
    problems = [f"source {name} {state}" for name, state in sorted(states.items()) if state != "up"]
    if uplink_state is not None and uplink_state not in HEALTHY_UPLINK:
        problems.append(f"uplink {uplink_state}")
    if problems:
        return "degraded", "; ".join(problems)
    return "online", "all sources up, uplink " + (uplink_state or "absent")


def read_status(state_dir: Path, now: float, *, stale_after_s: float = STALE_AFTER_S) -> StatusReport:
    """Read ``state_dir``'s status file and outbox; ``now`` is the wall clock (epoch seconds)."""
    path = state_dir / STATUS_FILE
    data: dict[str, Any] | None = None
    age: float | None = None
    unreadable: str | None = None
    try:
        stat = path.stat()
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        unreadable = f"status file {path} unreadable: {exc}"
    else:
        age = max(now - stat.st_mtime, 0.0)
        if isinstance(loaded, dict):
            data = loaded
        else:
            unreadable = f"status file {path} holds no JSON object"
    state, reason = classify(data, age, stale_after_s)
    if unreadable is not None:
        state, reason = "stale", unreadable
    outbox: OutboxView | None = None
    outbox_error: str | None = None
    try:
        outbox = read_outbox(state_dir / OUTBOX_FILE)
    except FileNotFoundError as exc:
        outbox_error = str(exc)
    except (sqlite3.Error, OSError) as exc:
        outbox_error = f"{state_dir / OUTBOX_FILE}: cannot read: {exc}"
    if data is None:
        return StatusReport(state_dir=state_dir, state=state, reason=reason, file_age_s=age, outbox=outbox,
                            outbox_error=outbox_error)
    uplink_raw = data.get("uplink")
    uplink: dict[str, Any] = uplink_raw if isinstance(uplink_raw, dict) else {}
    if outbox is None and isinstance(data.get("outbox"), dict):
        saved = data["outbox"]
        outbox = OutboxView(depth=_count(saved.get("depth")), oldest_ts=_number(saved.get("oldest_ts")),
                            last_seq=0, evicted_total=_count(saved.get("evicted_total")), newest=())
    uptime = _number(data.get("uptime_s"))
    return StatusReport(
        state_dir=state_dir, state=state, reason=reason, file_age_s=age,
        store_id=_text(data.get("store_id")), agent_id=_text(data.get("agent_id")),
        pid=data["pid"] if isinstance(data.get("pid"), int) else None, uptime_s=uptime,
        uplink_state=_text(uplink.get("state")), uplink_error=_text(uplink.get("last_error")),
        outbox=outbox, outbox_error=outbox_error, sources=_sources(data, uptime),
        tracks=_count(data.get("tracks")) if "tracks" in data else None,
        visits=_count(data.get("visits")) if "visits" in data else None,
        queue_dropped=_count(data.get("queue_dropped")), ack=_ack_line(uplink), recent_events=_recent(data),
        footfall=FootfallLine.of(data.get("footfall")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ago(seconds: float) -> str:
    return f"{duration(seconds)} ago"


def duration(seconds: float) -> str:
    """A human duration: ``42 s``, ``7 min``, ``3 h 12 min``, ``2 d 4 h``."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def utc_text(ts: float) -> str:
    """``2026-11-23 09:14:03Z``: event and file times for a person."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
