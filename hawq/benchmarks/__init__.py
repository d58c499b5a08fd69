"""Benchmarks: each module measures and writes CSV + markdown under ``results/`` only."""
