"""A child process for the crash tests: writes to an outbox and says what it was told was stored.

``python -m tests.helpers.outbox_writer write PATH SEED`` appends events forever (single
and batched, seeded), printing ``stored <seq> <event_id>`` for each event
once ``append``/``append_many`` has returned, and now and then acknowledges
the oldest rows as an uplink would, printing ``acked <seq> ...`` once ``ack``
has returned (and ``acking <seq> ...`` just before, since a kill between the
commit and the print is a legitimate moment too). The parent SIGKILLs it at a random moment and checks the file.

``python -m tests.helpers.outbox_writer uplink PATH HOST PORT`` runs an uplink over the
outbox and prints ``online`` once connected, for the last-will test.

Imported, it gives the outbox tests their events (``make_event``, ``events``,
``fill``) and a clock they set by hand (``FakeClock``).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from agent.config import BufferConfig, UplinkConfig
from agent.events import SectorEntered, utc_from_epoch, uuid7
from agent.outbox import Outbox
from agent.uplink import Uplink

STORE, AGENT = "fishmonger", "pi-1"


def make_event(i: int, rng: random.Random, agent: str = AGENT) -> SectorEntered:
    """A realistic ~260-byte presence event; ``i`` makes the time and the visit distinct."""
    ts = 1_760_000_000.0 + i * 0.25
    return SectorEntered(
        event_id=uuid7(int(ts * 1000), rng.randbytes(10)),
        store_id=STORE,
        agent_id=agent,
        ts=utc_from_epoch(ts),
        subject=f"{rng.getrandbits(64):016x}",
        visit_id=f"v{i // 7}",
        sector_id=rng.choice(["fish", "bakery", "tills", "entrance"]),
        probability=round(rng.uniform(0.6, 1.0), 3),
    )


def write(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    out = sys.stdout
    with Outbox.open(path, BufferConfig()) as outbox:
        i = 0
        while True:
            n = rng.choice([1, 1, 1, 5, 20, 50])
            events = [make_event(i + k, rng) for k in range(n)]
            i += n
            stored = [outbox.append(events[0])] if n == 1 else outbox.append_many(events)
            out.write("".join(f"stored {e.seq} {e.event_id}\n" for e in stored))
            out.flush()
            if rng.random() < 0.2:
                head = " ".join(str(row.seq) for row in outbox.peek(0, rng.randint(1, 30)))
                out.write(f"acking {head}\n")
                out.flush()
                outbox.ack(outbox.epoch, int(head.split()[-1]))  # as HQ does: everything up to the head's end
                out.write(f"acked {head}\n")
                out.flush()


def uplink(path: Path, host: str, port: int) -> None:
    with Outbox.open(path, BufferConfig()) as outbox:
        link = Uplink(UplinkConfig(host=host, port=port), outbox, store_id=STORE, agent_id=AGENT)
        link.start()
        if not link.wait_for("online", timeout=10):
            sys.stdout.write(f"failed {link.last_error}\n")
            return
        sys.stdout.write("online\n")
        sys.stdout.flush()
        while True:
            time.sleep(1)


def events(n: int, start: int = 0, seed: int = 1) -> list[SectorEntered]:
    """``n`` seeded events numbered from ``start``, not stored."""
    rng = random.Random(seed)
    return [make_event(start + i, rng) for i in range(n)]


class FakeClock:
    """A clock that says ``now`` until the test moves it."""

    def __init__(self, now: float = 1_760_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fill(outbox: Outbox, n: int, start: int = 0, seed: int = 3) -> None:
    """Store ``n`` seeded events numbered from ``start``, a thousand to a transaction."""
    rng = random.Random(seed + start)
    for offset in range(0, n, 1000):
        outbox.append_many([make_event(start + i, rng) for i in range(offset, min(n, offset + 1000))])


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        uplink(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
