"""Serving benchmark: the agent app vs a hand-written server vs MLServer vs bare ONNX Runtime.

Everything runs on one machine in one run, on the same small ONNX model and with the same
load generator (``wrk``). See ``docs/benchmarks.md`` for results and how to reproduce them.
"""
