"""Footfall for tests: an hour of Wi-Fi probes from shoppers with randomising phones, a PC and passers-by, with its truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.observations import Observation, ProbeFields

HOUR = 1_764_925_200.0
"""2025-12-05 09:00 UTC: the recording starts ten minutes before it and ends after it."""
START, END = HOUR - 600.0, HOUR + 3600.0 + 300.0
SIGNATURES = [f"{n:024x}" for n in (0x5151, 0x6262, 0x7373)]
"""Three phone models' element signatures (pseudonyms, as the Wi-Fi source writes them)."""


@dataclass(frozen=True)
class Recording:
    observations: list[Observation]
    arrivals: np.ndarray
    departures: np.ndarray

    def inside(self, at: float) -> int:
        return int(np.sum((self.arrivals <= at) & (at < self.departures)))

    def entries(self, start: float, end: float) -> int:
        return int(np.sum((self.arrivals >= start) & (self.arrivals < end)))


def _key(rng: np.random.Generator) -> str:
    return rng.bytes(12).hex()


def recording(seed: int) -> Recording:
    """Shoppers whose phones probe in bursts and draw a new random MAC every few minutes (the sequence number runs on),
    a PC that probes all day from one place, and passers-by heard weakly from the street. All at receiver pi-wifi."""
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.uniform(START, HOUR + 3600.0, rng.poisson(48)))
    departures = arrivals + rng.uniform(300.0, 1500.0, arrivals.size)
    observations: list[Observation] = []

    def burst(t: float, mac: str, seq: int, rssi: float, signature: str) -> int:
        """A phone's burst of probes; it moves and turns, so its power wanders by a few dB."""
        for frame in range(int(rng.integers(2, 4))):
            seq = (seq + 1) % 4096
            observations.append(Observation(
                ts=t + 0.02 * frame, receiver_id="pi-wifi", emitter_id=mac, tech="wifi",
                rssi_dbm=float(np.clip(rssi + rng.normal(0.0, 5.0), -120.0, -20.0)),
                probe=ProbeFields(sequence=seq, signature=signature, randomised=True)))
        return seq

    for arrive, leave in zip(arrivals, departures, strict=True):
        signature, seq, mac = SIGNATURES[int(rng.integers(3))], int(rng.integers(4096)), _key(rng)
        rssi, t, renew = rng.uniform(-75.0, -55.0), arrive, arrive + rng.uniform(120.0, 400.0)
        while t < min(leave, END):
            if t > renew:
                mac, renew = _key(rng), t + rng.uniform(120.0, 400.0)
            seq = burst(t, mac, seq, rssi, signature)
            t += rng.uniform(20.0, 60.0)
    pc, seq, t = _key(rng), 0, START
    while t < END:
        for frame in range(2):
            seq += 1
            observations.append(Observation(ts=t + 0.02 * frame, receiver_id="pi-wifi", emitter_id=pc, tech="wifi",
                                            rssi_dbm=-58.0 + float(rng.normal(0.0, 0.3)),
                                            probe=ProbeFields(sequence=seq % 4096, signature=SIGNATURES[0],
                                                              randomised=False)))
        t += 45.0
    for passing in rng.uniform(START, END, 150):
        burst(float(passing), _key(rng), int(rng.integers(4096)), -95.0, SIGNATURES[int(rng.integers(3))])
    observations.sort(key=lambda o: o.ts)
    return Recording(observations, arrivals, departures)
