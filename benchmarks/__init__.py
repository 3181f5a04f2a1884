"""Benchmarks of modelfleet (not part of the installed package).

Run them with ``python -m benchmarks.run`` (or ``make bench``).
"""
