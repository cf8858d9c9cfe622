"""Reliability tooling: the graph's nodes as watched processes (fault, soak, two-host, privacy checks)."""
