"""Santi's pure positioning core: NumPy and SciPy only, no I/O, no clocks.

Path loss and calibration, multilateration, the batched Kalman tracker, the
sector model and the Cramér-Rao bound. Nothing here imports the rest of
Santi; callers pass timestamps and arrays in and get arrays back.
"""
