"""The relay's benchmark: ``python -m bench`` (see docs/benchmarks.md).

Each scenario runs the relay (``python -m relay run``) and a bare forwarder
(:mod:`bench.bare`) in subprocesses of their own against the same peers process
(:mod:`bench.peers`: the project's simulator and a minimal webhook receiver), and
measures both the same way: rates from the peers' clock, CPU and memory from /proc.
"""
