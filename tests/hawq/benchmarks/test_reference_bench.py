"""hawq.benchmarks.reference: its outputs (not its timings) with a tiny model."""
from __future__ import annotations

import csv

from hawq.benchmarks import reference as bench


def test_reference_bench_writes_rows_that_compare_both_paths(tmp_path):
    assert bench.main(["-a", "resnet20_cifar10", "-b", "2", "--input-size", "32", "--out-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "reference.csv")))
    assert len(rows) == 1 and rows[0]["arch"] == "resnet20_cifar10" and rows[0]["same"] == "True"
    assert float(rows[0]["reference_ms"]) > 0 and float(rows[0]["int64_ms"]) > 0 and rows[0]["host"]
    md = (tmp_path / "reference.md").read_text()
    assert "python -m hawq.benchmarks.reference -a resnet20_cifar10" in md and "| resnet20_cifar10 |" in md
