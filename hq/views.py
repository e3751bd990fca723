"""Profiles read from the store: the one place that joins stored events to the pure figures."""

from __future__ import annotations

from agent.events import utc_from_epoch
from hq.profile import Profile, build_profile, visits_from_events
from hq.store import Store


def loyalty_profile(store: Store, loyalty_id: str, now: float) -> Profile:
    """The person behind a loyalty id: every visit an identity.linked joined to it, and card taps."""
    events, taps = store.loyalty_events(loyalty_id)
    return build_profile("loyalty", loyalty_id, visits_from_events(events),
                         [tap.ts for tap in taps], utc_from_epoch(now))


def visitor_profile(store: Store, subject: str, now: float) -> Profile:
    """One pseudonymous visitor (a device within one salt period)."""
    return build_profile("visitor", subject, visits_from_events(store.subject_events(subject)),
                         [], utc_from_epoch(now))
