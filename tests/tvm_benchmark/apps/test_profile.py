"""tvm_benchmark.apps.profile: every kernel of a whole program timed in place, one row per kernel."""
from __future__ import annotations

import pytest

from tvm_benchmark.apps import profile


def test_profile_table_names_the_fused_kernels(tmp_path, capsys):
    out = tmp_path / "profile.md"
    assert profile.main(["-a", "resnet20_cifar10", "-b", "2", "--runs", "2", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| kernel")]
    names = [r.split(" | ")[0].removeprefix("| ") for r in rows]
    # The planned convolutions carry their requantization (fused epilogue): the names say so.
    convs = [n for n in names if "conv2d" in n]
    assert convs and all("right_shift" in n for n in convs), convs
    shares = [float(r.rstrip(" |").split(" | ")[-1]) for r in rows]
    assert abs(sum(shares) - 100) < 1.5
    assert "Whole program" in text and "python -m tvm_benchmark.apps.profile" in text
    assert "Whole program" in capsys.readouterr().out


def test_profile_bad_scheme_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        profile.cli(["-a", "resnet20_cifar10", "--quant-scheme", "nope"])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
