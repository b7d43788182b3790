"""Benchmarks: systems and the loop that runs them, the worker subprocess, step-time replay, reports, the
machine and memory readings, and the synthetic KILT set of `bench retrieve`."""
