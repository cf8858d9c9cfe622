"""Benchmarks: ``python -m facediff_ros.bench.<name>`` prints timings on this machine."""
