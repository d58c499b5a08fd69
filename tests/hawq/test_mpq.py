"""hawq.mpq: decision groups vs HAWQ-V3's schemes, the budget convention, exact linear costs, the ILP
against brute force, constraints in the output, sweep, determinism and one-line errors."""
from __future__ import annotations

import csv
import itertools
import json
import os
import random

import pytest

from conftest import ROOT, cli, csv_rows
from hawq import mpq
from hawq.apps import mpq as mpq_app
from hawq.bit_config import list_schemes, load_scheme, scheme_stats
from hawq.errors import HawqError
from hawq.models.layers import WEIGHT_KINDS, quant_layers
from hawq.fileio import rows_csv
from hawq.sensitivity import CSV_FIELDS

ARCH = "resnet18"


# --------------------------------------------------------------------------- fixtures
def _sensitivity_csv(path, arch: str = ARCH, seed: int = 0, drop: str | None = None) -> str:
    """A synthetic sensitivity CSV (seeded): Ω_4 > Ω_8 > 0, spread over three decades."""
    rng = random.Random(seed)
    rows = []
    for spec in quant_layers(arch):
        if spec.kind in WEIGHT_KINDS and spec.name != drop:
            om8 = 10 ** rng.uniform(-6, -3)
            rows.append({"layer": spec.name, "params": spec.weight_numel, "trace": 1.0, "trace_per_param": 0.0,
                         "iters": 1, "rel_err": 0.0, "pert_4": 1.0, "pert_8": 1.0,
                         "omega_4": om8 * rng.uniform(100, 300), "omega_8": om8})
    path.write_text(rows_csv(rows, CSV_FIELDS))
    return str(path)


def _latency_csv(path, arch: str = ARCH, drop: tuple[str, int] | None = None, four_slower: bool = False) -> str:
    """Per-layer latency table: ms proportional to MACs, 4-bit at 0.6x (or 1.5x) the 8-bit time."""
    lines = ["layer,bits,median_ms,p90_ms"]
    for spec in quant_layers(arch):
        if spec.kind in WEIGHT_KINDS:
            for bits in (4, 8):
                ms = spec.macs / 1e8 * (1.0 if bits == 8 else 1.5 if four_slower else 0.6)
                if (spec.name, bits) != drop:
                    lines.append(f"{spec.name},{bits},{ms:.6f},{ms * 1.1:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def sens(tmp_path):
    return _sensitivity_csv(tmp_path / "sens.csv")


@pytest.fixture
def latency(tmp_path):
    return _latency_csv(tmp_path / "lat.csv")


def _run(argv, capsys):
    """hawq.apps.mpq.main in-process: (exit code, stdout, stderr)."""
    try:
        mpq_app.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- groups and costs
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_published_scheme_is_one_choice_per_group(arch):
    groups = mpq.free_groups(arch)
    assert mpq.fixed_acts(arch) == {"quant_input", "quant_act_output"}
    assert all(g.act not in mpq.fixed_acts(arch) for g in groups)
    for name in list_schemes(arch):
        scheme = load_scheme(arch, name)
        choice = {g.act: scheme[g.act] for g in groups}
        assert mpq.scheme_of(arch, choice) == scheme, name


def test_stem_head_and_accumulators_are_fixed():
    scheme = mpq.scheme_of(ARCH, mpq.uniform_choice(mpq.free_groups(ARCH), 4))
    assert scheme == load_scheme(ARCH, "uniform4")
    for name in ("quant_input", "quant_init_block_convbn", "quant_act_output", "quant_output"):
        assert scheme[name] == 8
    assert all(scheme[s.name] == 16 for s in quant_layers(ARCH) if s.kind == "act_int32")


@pytest.mark.parametrize("kind, index, prefix", [("bops", 1, "bops_"), ("size", 0, "modelsize_")])
def test_fraction_convention_brackets_hawqs_published_schemes(kind, index, prefix):
    """HAWQ-V3's bops_r / modelsize_r lie in (budget(r - 0.25), budget(r)] of lo + r·(hi - lo)."""
    problem = mpq.Problem.build(ARCH, {n: {4: 1.0, 8: 0.0} for g in mpq.free_groups(ARCH) for n in g.layers})
    cost = problem.costs[kind]
    for r in (0.25, 0.5, 0.75):
        value = scheme_stats(ARCH, load_scheme(ARCH, f"{prefix}{r}"))[index]
        below = mpq.Constraint(kind, r - 0.25, False, "").budget(cost)
        assert below < value <= mpq.Constraint(kind, r, False, "").budget(cost)


def test_linear_costs_equal_the_exact_metrics(latency):
    table = mpq.read_latency_table(latency, ARCH)
    groups = mpq.free_groups(ARCH)
    metrics = mpq.metrics_of(ARCH, table)
    costs = {k: mpq.linear_cost(ARCH, groups, fn) for k, fn in metrics.items()}
    rng = random.Random(1)
    for _ in range(10):
        choice = {g.act: rng.choice((4, 8)) for g in groups}
        scheme = mpq.scheme_of(ARCH, choice)
        for kind, fn in metrics.items():
            assert costs[kind].total(choice) == pytest.approx(fn(scheme), rel=1e-12)


# --------------------------------------------------------------------------- ILP vs brute force
def _brute_force(omega, limits):
    groups = list(omega)
    best = None
    for bits in itertools.product((4, 8), repeat=len(groups)):
        choice = dict(zip(groups, bits))
        if all(sum(cost[g][b] for g, b in choice.items()) <= budget for cost, budget in limits):
            value = sum(omega[g][b] for g, b in choice.items())
            if best is None or value < best:
                best = value
    return best


def test_ilp_finds_the_brute_force_optimum_on_random_instances():
    rng = random.Random(0)
    infeasible = 0
    for trial in range(40):
        n = rng.randint(3, 10)
        groups = [f"g{i}" for i in range(n)]
        omega = {g: {4: rng.uniform(0, 1), 8: rng.uniform(0, 0.3)} for g in groups}
        limits = []
        for _ in range(rng.randint(1, 3)):
            cost = {g: {4: rng.uniform(0, 1), 8: rng.uniform(0, 2)} for g in groups}
            lo = sum(min(d.values()) for d in cost.values())
            hi = sum(max(d.values()) for d in cost.values())
            limits.append((cost, lo + rng.uniform(-0.1, 1.0) * (hi - lo)))
        want = _brute_force(omega, limits)
        got = mpq.solve_ilp(omega, limits)
        if want is None:
            infeasible += 1
            assert got is None, trial
            continue
        assert got is not None and set(got) == set(groups)
        for cost, budget in limits:
            assert sum(cost[g][b] for g, b in got.items()) <= budget + 1e-9
        assert sum(omega[g][b] for g, b in got.items()) == pytest.approx(want, rel=1e-9, abs=1e-12), trial
    assert 0 < infeasible < 40  # both kinds of instance were exercised


# --------------------------------------------------------------------------- CLI
def test_every_constraint_is_respected_and_the_scheme_loads(sens, latency, tmp_path, capsys):
    out = tmp_path / "my_scheme.json"
    code, stdout, err = _run(["-a", ARCH, "--sensitivity", sens, "--constraint", "bops=0.5", "--constraint",
                              "size=0.6", "--constraint", "latency=0.7", "--latency-table", latency,
                              "--name", "my_scheme", "--out", str(out)], capsys)
    assert code == 0, err
    scheme = load_scheme(ARCH, str(out))  # what quant_train.py --quant-scheme my_scheme.json does
    size, gbops = scheme_stats(ARCH, scheme)
    problem = mpq.Problem.build(ARCH, mpq.read_sensitivity(sens, ARCH), mpq.read_latency_table(latency, ARCH))
    budgets = {k: mpq.parse_constraint(f"{k}={r}").budget(problem.costs[k])
               for k, r in (("bops", 0.5), ("size", 0.6), ("latency", 0.7))}
    lat = mpq.scheme_latency(mpq.read_latency_table(latency, ARCH), scheme)
    assert gbops <= budgets["bops"] and size <= budgets["size"] and lat <= budgets["latency"]
    doc = json.loads(out.read_text())
    assert list(doc["schemes"]) == ["my_scheme"] and doc["arch"] == ARCH
    assert doc["mpq"]["gbops"] == pytest.approx(gbops) and doc["mpq"]["latency_ms"] == pytest.approx(lat)
    # not all 4 and not all 8: the budgets bind
    assert 0 < len(doc["mpq"]["groups_8bit"]) < len(mpq.free_groups(ARCH))
    assert f"{gbops:.4f} GBOPS" in stdout
    table = cli("bit_config.py", "--table", "-a", ARCH, "--quant-scheme", str(out), timeout=120)
    assert table.returncode == 0, table.stderr
    row = list(csv.DictReader(table.stdout.splitlines()))[0]
    assert float(row["gbops"]) == round(gbops, 2) and float(row["size_mb"]) == round(size, 3)


def test_absolute_budgets_and_a_tighter_budget_costs_more_omega(sens, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _run(["-a", ARCH, "--sensitivity", sens, "--constraint", "bops=60GBOPS", "--out", str(a)], capsys)[0] == 0
    assert _run(["-a", ARCH, "--sensitivity", sens, "--constraint", "bops=90GBOPS", "--out", str(b)], capsys)[0] == 0
    da, db = json.loads(a.read_text())["mpq"], json.loads(b.read_text())["mpq"]
    assert da["gbops"] <= 60 < db["gbops"] <= 90 and da["objective"] > db["objective"]


def test_same_input_same_output(sens, tmp_path, capsys):
    outs = [tmp_path / f"{i}.json" for i in range(2)]
    for out in outs:
        assert _run(["-a", ARCH, "--sensitivity", sens, "--constraint", "bops=0.5", "--name", "s",
                     "--out", str(out)], capsys)[0] == 0
    first, second = (json.loads(out.read_text()) for out in outs)
    assert first.pop("source").endswith("0.json") and second.pop("source").endswith("1.json")
    assert first == second


def test_sweep_writes_a_monotone_front_and_a_plot(sens, tmp_path, capsys):
    out = tmp_path / "front.csv"
    code, _, err = _run(["-a", ARCH, "--sensitivity", sens, "--sweep", "bops=0.25:1.0:0.25", "--out", str(out)],
                        capsys)
    assert code == 0, err
    rows = csv_rows(out)
    assert [float(r["fraction"]) for r in rows] == [0.25, 0.5, 0.75, 1.0]
    objectives = [float(r["objective"]) for r in rows]
    assert objectives == sorted(objectives, reverse=True) and objectives[0] > objectives[-1]
    assert all(float(r["gbops"]) <= float(r["budget"]) * (1 + 1e-9) for r in rows)
    assert rows[-1]["bits"] == "8" * len(mpq.free_groups(ARCH)) and rows[-1]["pareto"] == "True"
    assert (tmp_path / "front.png").stat().st_size > 1000


def test_pareto_flags():
    assert mpq.pareto_flags([(1, 5), (2, 3), (2, 4), (3, 3), (4, 1), (4, 1)]) == [True, True, False, False, True,
                                                                                 False]


@pytest.mark.parametrize("args, message", [
    (["--constraint", "bops=1.5"], "must be in [0, 1]"),
    (["--constraint", "speed=0.5"], "unknown constraint 'speed'"),
    (["--constraint", "bops"], "KIND=VALUE"),
    (["--constraint", "size=6MS"], "does not fit size"),
    (["--constraint", "latency=0.5"], "--latency-table"),
    (["--constraint", "bops=0.5", "--constraint", "bops=0.6"], "more than one bops"),
    (["--constraint", "size=1MB"], "constraint size=1MB is infeasible"),
    (["--sweep", "bops=0.5:0.25:0.1"], "STOP >= START"),
    ([], "at least one --constraint"),
])
def test_bad_constraints_are_one_line_errors(args, message, sens, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mpq_app, "LATENCY_ROOT", tmp_path / "no-tables")   # latency: no table for this host
    out = tmp_path / "x.json"
    code, stdout, err = _run(["-a", ARCH, "--sensitivity", sens, *args, "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_infeasible_message_names_the_minimum(sens, tmp_path, capsys):
    _, _, err = _run(["-a", ARCH, "--sensitivity", sens, "--constraint", "bops=0.5", "--constraint", "size=5MB",
                      "--out", str(tmp_path / "x.json")], capsys)
    lo = scheme_stats(ARCH, load_scheme(ARCH, "uniform4"))[0]
    assert "size=5MB is infeasible" in err and f"minimum {lo:.6g} MB" in err


def test_jointly_infeasible_names_the_tightest(sens, tmp_path, capsys):
    """4-bit slower than 8-bit: bops=0 forces all-4, latency=0.2 wants most groups at 8."""
    slow4 = _latency_csv(tmp_path / "slow4.csv", four_slower=True)
    _, _, err = _run(["-a", ARCH, "--sensitivity", sens, "--constraint", "bops=0", "--constraint", "latency=0.2",
                      "--latency-table", slow4, "--out", str(tmp_path / "x.json")], capsys)
    assert "no scheme meets all constraints at once; the tightest is" in err, err


def test_latency_table_missing_a_row_is_an_error(sens, tmp_path, capsys):
    table = _latency_csv(tmp_path / "lat.csv", drop=("stage2.unit1.quant_convbn1", 4))
    _, _, err = _run(["-a", ARCH, "--sensitivity", sens, "--constraint", "latency=0.5", "--latency-table", table,
                      "--out", str(tmp_path / "x.json")], capsys)
    assert "no row for layer stage2.unit1.quant_convbn1 at 4 bits" in err


def test_latency_table_of_another_arch_is_an_error(tmp_path):
    table = _latency_csv(tmp_path / "lat50.csv", arch="resnet50")
    with pytest.raises(HawqError, match="not a layer of resnet18"):
        mpq.read_latency_table(table, ARCH)


def test_sensitivity_missing_a_layer_is_an_error(tmp_path):
    path = _sensitivity_csv(tmp_path / "s.csv", drop="stage3.unit2.quant_convbn2")
    with pytest.raises(HawqError, match="no row for layer 'stage3.unit2.quant_convbn2'"):
        mpq.read_sensitivity(path, ARCH)
    with pytest.raises(HawqError, match="missing column"):
        mpq.read_sensitivity(str(_latency_csv(tmp_path / "l.csv")), ARCH)


def test_cli_entry_point_one_line_error():
    proc = cli("-m", "hawq.mpq", "--sensitivity", "/nonexistent.csv", "--constraint", "bops=0.5", "--out", "x.json",
               timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: sensitivity file /nonexistent.csv: no such file"


@pytest.mark.parametrize("arch", ["resnet20_cifar10", "resnet18", "resnet50"])
def test_committed_tvm_latency_tables_cover_every_layer(arch):
    """The tables `python -m tvm_benchmark.layer_latency` wrote for this host are complete inputs."""
    from tvm_benchmark.targets import target_tag
    path = os.path.join(ROOT, "tvm_benchmark", "layer_latency", target_tag("llvm"), f"{arch}.csv")
    if not os.path.isfile(path):
        pytest.skip(f"no latency table committed for this host ({target_tag('llvm')})")
    table = mpq.read_latency_table(path, arch)
    for bits in (4, 8):
        assert mpq.scheme_latency(table, load_scheme(arch, f"uniform{bits}")) > 0
    assert all(v >= 0 for v in table.values())


def test_latency_constraint_reads_this_hosts_table(sens, tmp_path, capsys, monkeypatch):
    """Without --latency-table the table of this host's key is used (and named); when there is none
    one line names the key and the keys that exist."""
    from tvm_benchmark.targets import target_tag
    monkeypatch.setattr(mpq_app, "LATENCY_ROOT", tmp_path / "tables")
    (tmp_path / "tables" / "llvm-other-vnni").mkdir(parents=True)
    _latency_csv(tmp_path / "tables" / "llvm-other-vnni" / f"{ARCH}.csv")
    argv = ["-a", ARCH, "--sensitivity", sens, "--constraint", "latency=0.7", "--out", str(tmp_path / "x.json")]
    code, _, err = _run(argv, capsys)
    assert code == 2 and not (tmp_path / "x.json").exists()
    assert f"no per-layer latency table for this host ({target_tag('llvm')})" in err
    assert "llvm-other-vnni" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "tables" / target_tag("llvm")).mkdir()
    own = _latency_csv(tmp_path / "tables" / target_tag("llvm") / f"{ARCH}.csv")
    code, _, err = _run(argv, capsys)
    assert code == 0 and f"latency table: {own} (this host)" in err and (tmp_path / "x.json").is_file()
