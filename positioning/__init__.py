"""Santi's pure positioning core: RSSI in, positions and sectors out.

NumPy and SciPy only: no I/O, no clocks, no imports from the rest of Santi.
Every function takes the time it needs as an argument.

- `pathloss`: the log-distance radio model and its robust calibration.
- `radiomap`: per-receiver residual fields of that model, learnt from a calibration walk.
- `fingerprint`: each sector's RSSI signature, learnt from a calibration walk.
- `multilaterate`: a snapshot fix from one set of readings (and the baseline).
- `tracker`: a batched constant-velocity EKF per emitter fed RSSI directly.
- `stillgrid`: where a still emitter stands, weighed against every cell of the store.
- `sectors`: sector probabilities, an HMM over the adjacency graph, hysteresis.
- `bounds`: the Cramér-Rao lower bound of a receiver layout.

Nothing is imported here: the agent's hot path needs only `tracker` and
`sectors`, and `scipy.optimize` (for the fits) costs ~45 MB of resident
memory a Pi should not pay for a module it never calls.
"""
