"""hawq.bench: the QAT-overhead benchmark's outputs (not its timings) with tiny settings."""
from __future__ import annotations

import csv

import pytest
import torch

from hawq.benchmarks import qat_overhead as bench

HEADER = ["arch", "scheme", "quantizer", "batch", "fp_step_ms", "qat_step_ms", "ratio"]


def test_bench_tiny_run_writes_csv_and_markdown(tmp_path, capsys):
    threads = torch.get_num_threads()
    # one thread: on a busy 2-core machine two spinning OpenMP threads can make a step 50x slower
    rows = bench.main(["--batch-size", "8", "--rounds", "2", "--steps", "1", "--warmup", "1",
                       "--threads", "1", "--no-progress", "--out-dir", str(tmp_path)])
    assert torch.get_num_threads() == threads  # --threads is restored after the run

    with open(tmp_path / "qat_overhead.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == HEADER
    body = [dict(zip(HEADER, r)) for r in table[1:]]
    assert len(body) == 2 == len(rows)  # default schemes: uniform8, uniform4; one arch, one batch
    assert [r["scheme"] for r in body] == ["uniform8", "uniform4"]
    for r in body:
        assert r["arch"] == "resnet20_cifar10" and r["batch"] == "8"
        fp, qat, ratio = float(r["fp_step_ms"]), float(r["qat_step_ms"]), float(r["ratio"])
        assert fp > 0 and qat > 0
        assert len(r["fp_step_ms"].split(".")[1]) == 2 and len(r["ratio"].split(".")[1]) == 3
        # the ratio is computed before rounding the times: allow their rounding error too
        assert ratio == pytest.approx(qat / fp, abs=5e-4 + 0.005 * (1 / fp + qat / fp**2))
    assert body[0]["fp_step_ms"] == body[1]["fp_step_ms"]  # one FP measurement per arch/batch

    md = (tmp_path / "qat_overhead.md").read_text()
    assert "| " + " | ".join(HEADER) + " |" in md
    assert "python -m hawq.bench" in md and torch.__version__ in md and "1 threads" in md
    assert all(f"| {r['scheme']} | minmax | 8 | {r['fp_step_ms']} | {r['qat_step_ms']} | {r['ratio']} |" in md for r in body)
    assert md in capsys.readouterr().out  # the table is printed too


def test_bench_quantizers_and_ddp_step(tmp_path, capsys):
    rows = bench.main(["--batch-size", "8", "--rounds", "1", "--steps", "1", "--warmup", "1", "--threads", "1",
                       "--quant-scheme", "uniform4", "--quantizer", "minmax", "lsq", "pact", "dorefa", "--ddp", "2",
                       "--no-progress", "--out-dir", str(tmp_path)])
    assert [r["quantizer"] for r in rows] == ["minmax", "lsq", "pact", "dorefa"]
    with open(tmp_path / "qat_ddp_step.csv", newline="") as f:
        ddp = list(csv.DictReader(f))
    assert [r["quantizer"] for r in ddp] == ["minmax", "lsq", "pact", "dorefa"]
    assert all(r["processes"] == "2" and float(r["ddp_step_ms"]) > 0 for r in ddp)
    assert "## Distributed QAT step" in (tmp_path / "qat_overhead.md").read_text()


def test_bench_rerun_overwrites_csv(tmp_path):
    args = ["--batch-size", "4", "--rounds", "1", "--steps", "1", "--warmup", "0", "--threads", "1",
            "--quant-scheme", "uniform4", "--no-progress", "--out-dir", str(tmp_path)]
    bench.main(args)
    bench.main(args)
    lines = (tmp_path / "qat_overhead.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == ",".join(HEADER)


@pytest.mark.parametrize("argv, needle", [
    (["-a", "nosuchnet"], "unknown arch 'nosuchnet'"),
    (["--quant-scheme", "nosuchscheme"], "no scheme or JSON file 'nosuchscheme'"),
    (["--rounds", "0"], "--rounds must be >= 1"),
])
def test_bench_bad_input_is_one_line_error(tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv + ["--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err
    assert not (tmp_path / "qat_overhead.csv").exists()
