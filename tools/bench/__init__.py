"""Benchmarks of the reset path against the Graph emulator: ``python -m tools.bench``.

Each benchmark prints its absolute figures next to a baseline measured in the same run, the
ratio, the issue's goal and PASS/FAIL: ``cpu`` (CPU per reset vs plain httpx), ``throughput``
(write-budget-limited rate vs the ideal), ``loop`` (concurrent vs a one-at-a-time loop) and
``import`` (cold import of ``function_app`` vs the Functions and storage SDKs).
"""
