"""Hessian-aware mixed-precision bit allocation by integer linear programming (HAWQ-V3, section 3.4).

    python -m hawq.mpq -a resnet20_cifar10 --sensitivity sens.csv --constraint bops=0.5 \
        [--constraint size=0.6] [--constraint latency=0.7 --latency-table PATH] --name my_scheme --out my_scheme.json
    python -m hawq.mpq -a resnet20_cifar10 --sensitivity sens.csv --sweep bops=0.25:1.0:0.05 --out front.csv

**Decision groups.** HAWQ-V3 gives an activation quantizer the bit width of the convolutions it
feeds (every published bit_config does), so one decision is one *group*: an activation quantizer
(``stage1.unit1.quant_act``) plus the conv/linear layers whose input it is
(``quant_convbn1`` and, in a downsampling unit, ``quant_identity_convbn``). The stem group
(``quant_input`` + init conv) and the head group (``quant_act_output`` + ``quant_output``) stay
8-bit and the ``quant_act_int32`` residual accumulators 16-bit; every other group is 4 or 8.

**Program.** One binary ``x[g,b]`` per free group and width b in (4, 8), ``Σ_b x[g,b] = 1``;
minimize ``Σ Ω_g(b)·x[g,b]`` (Ω_g = Σ of the group's layers' ``omega_<b>`` from
``hawq.sensitivity``) subject to one linear budget per constraint. Size (MiB) and BOPS (GBOPS)
come from :func:`hawq.bit_config.scheme_stats`, latency (ms) from a per-layer table; all three
are sums over groups, so each group's cost is measured as the change of the metric when that group
alone goes from 4 to 8 bits. Solved exactly (zero MIP gap) with HiGHS through PuLP (CBC when
highspy is missing).

**Budgets.** ``kind=r`` with a bare number r in [0, 1] is HAWQ-V3's fraction: ``lo + r·(hi - lo)``
with lo / hi the metric of the scheme with every free group at 4 / 8 bits (so ``bops=0.5`` is
HAWQ's ``bops_0.5``). An absolute budget carries its unit: ``size=6.5MB`` (MiB), ``bops=75GBOPS``,
``latency=3.2ms``.

**Latency table** (``--latency-table``, e.g. ``results/layer_latency/<target>/<arch>.csv``):
CSV with header ``layer,bits,median_ms,p90_ms``, one row per (bit_config layer, width). A scheme's
latency is the sum of ``median_ms`` of the rows of its (layer, width) pairs over the layers the
table lists; it must list every conv/linear layer at every width the layer can take.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hawq.bit_config import ALLOWED_BITS, scheme_stats, validate_scheme
from hawq.errors import HawqError
from hawq.models.archs import arch_info
from hawq.models.layers import WEIGHT_KINDS, quant_layers
from hawq.fileio import rows_csv, write_text_atomic
from hawq.sensitivity import BITS

__all__ = ["FIXED_BITS", "UNITS", "METRIC_KEYS", "UNIT_SPELLINGS", "LATENCY_FIELDS", "SWEEP_FIELDS",
           "REL_TOL", "Group", "fixed_acts", "free_groups", "scheme_of", "uniform_choice",
           "read_sensitivity", "group_omega", "read_latency_table", "scheme_latency", "metrics_of",
           "LinearCost", "linear_cost", "Constraint", "parse_value", "parse_constraint", "parse_sweep",
           "solve_ilp", "Solution", "Problem", "scheme_json", "bits_string", "pareto_flags", "sweep_rows",
           "plot_front"]

#: Width of the layers outside free groups (``quant_act_int32`` takes its only allowed width, 16).
FIXED_BITS = 8
#: Constraint kinds and the unit of their absolute budgets.
UNITS = {"size": "MB", "bops": "GBOPS", "latency": "ms"}
#: Column / JSON key of each metric's value.
METRIC_KEYS = {"size": "size_mb", "bops": "gbops", "latency": "latency_ms"}
#: Accepted unit spellings (lower case) per kind.
UNIT_SPELLINGS = {"size": ("mb", "mib"), "bops": ("gbops", "g"), "latency": ("ms",)}
LATENCY_FIELDS = ("layer", "bits", "median_ms", "p90_ms")
SWEEP_FIELDS = ("kind", "fraction", "budget", "objective", "size_mb", "gbops", "latency_ms", "groups_8bit",
                "pareto", "bits")
#: Relative slack allowed when checking a solution against its budgets (float summation order).
REL_TOL = 1e-9

Scheme = dict[str, int]
Metric = Callable[[Mapping[str, int]], float]
Costs = Mapping[str, Mapping[int, float]]


# --------------------------------------------------------------------------- groups / schemes
@dataclass(frozen=True)
class Group:
    """One decision: activation quantizer ``act`` and the conv/linear ``layers`` it feeds."""

    act: str
    layers: tuple[str, ...]


def fixed_acts(arch: str) -> frozenset[str]:
    """Activation quantizers whose groups stay 8-bit: the model input's (the stem) and the one
    feeding the last weighted layer (the classifier) - ``quant_input`` / ``quant_act_output`` in
    HAWQ's names, the same rule as :func:`hawq.bit_config.bits_of_layers`'s ``first_last_8bit``."""
    specs = quant_layers(arch)
    acts = [s.name for s in specs if s.kind == "act"]
    weighted = [s for s in specs if s.kind in WEIGHT_KINDS]
    return frozenset({acts[0], weighted[-1].input_act} - {None})


def free_groups(arch: str) -> list[Group]:
    """The groups of ``arch`` that take 4 or 8 bits, in graph order."""
    fed: dict[str, list[str]] = {}
    for spec in quant_layers(arch):
        if spec.kind in WEIGHT_KINDS:
            fed.setdefault(spec.input_act, []).append(spec.name)
    fixed = fixed_acts(arch)
    return [Group(act, tuple(layers)) for act, layers in fed.items() if act not in fixed]


def scheme_of(arch: str, choice: Mapping[str, int]) -> Scheme:
    """The full validated bit_config for ``choice`` = {group act: bits}; other layers fixed."""
    bits = {spec.name: ALLOWED_BITS[spec.kind][-1] if spec.kind == "act_int32" else FIXED_BITS
            for spec in quant_layers(arch)}
    for group in free_groups(arch):
        for name in (group.act, *group.layers):
            bits[name] = choice[group.act]
    return validate_scheme(arch, bits)


def uniform_choice(groups: Sequence[Group], bits: int) -> dict[str, int]:
    return {g.act: bits for g in groups}


# --------------------------------------------------------------------------- inputs
def _read_csv(path: str, what: str, fields: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV that must have at least ``fields`` in its header; HawqError otherwise."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise HawqError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HawqError(f"{what} {path}: cannot read: {exc}") from None
    missing = [name for name in fields if name not in header]
    if missing:
        raise HawqError(f"{what} {path}: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    return rows


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise HawqError(f"{where}: not a finite number: {text!r}")
    return value


def _check_layer(arch: str, name: str, where: str) -> None:
    if name not in {spec.name for spec in quant_layers(arch)}:
        raise HawqError(f"{where}: layer {name!r} is not a layer of {arch}")


def read_sensitivity(path: str, arch: str) -> dict[str, dict[int, float]]:
    """{weight layer: {bits: Ω}} from a ``hawq.sensitivity`` CSV; every free group's layers needed."""
    out: dict[str, dict[int, float]] = {}
    for row in _read_csv(path, "sensitivity file", ["layer"] + [f"omega_{b}" for b in BITS]):
        where = f"sensitivity file {path}"
        _check_layer(arch, row["layer"], where)
        out[row["layer"]] = {b: _number(row[f"omega_{b}"], f"{where}, layer {row['layer']}") for b in BITS}
    needed = [name for g in free_groups(arch) for name in g.layers if name not in out]
    if needed:
        raise HawqError(f"sensitivity file {path}: no row for layer {needed[0]!r}"
                        + (f" (and {len(needed) - 1} more)" if len(needed) > 1 else "")
                        + f"; was it computed for -a {arch}?")
    return out


def group_omega(groups: Sequence[Group], omega: Mapping[str, Mapping[int, float]]) -> dict[str, dict[int, float]]:
    """{group act: {bits: Σ Ω of its layers}}."""
    return {g.act: {b: sum(omega[name][b] for name in g.layers) for b in BITS} for g in groups}


def read_latency_table(path: str, arch: str) -> dict[tuple[str, int], float]:
    """{(layer, bits): median_ms} from a per-layer latency CSV, checked against ``arch``.

    Every conv/linear layer must have a row for each width it can take (4 and 8 in a free group,
    8 in the stem/head); a listed activation layer likewise. Duplicates and bad numbers are errors.
    """
    where = f"latency table {path}"
    table: dict[tuple[str, int], float] = {}
    for row in _read_csv(path, "latency table", LATENCY_FIELDS):
        _check_layer(arch, row["layer"], where)
        bits = _number(row["bits"], f"{where}, layer {row['layer']} bits")
        ms = _number(row["median_ms"], f"{where}, layer {row['layer']} median_ms")
        key = (row["layer"], int(bits))
        if bits != int(bits) or ms < 0:
            raise HawqError(f"{where}: layer {row['layer']}: bits must be an integer and median_ms >= 0")
        if key in table:
            raise HawqError(f"{where}: duplicate row for layer {key[0]} at {key[1]} bits")
        table[key] = ms
    free = {name: BITS for g in free_groups(arch) for name in (g.act, *g.layers)}
    listed = {layer for layer, _ in table}
    fixed = scheme_of(arch, uniform_choice(free_groups(arch), FIXED_BITS))
    needed = [(spec.name, b) for spec in quant_layers(arch)
              if spec.kind in WEIGHT_KINDS or spec.name in listed
              for b in free.get(spec.name, (fixed[spec.name],)) if (spec.name, b) not in table]
    if needed:
        layer, b = needed[0]
        more = f" (and {len(needed) - 1} more)" if len(needed) > 1 else ""
        raise HawqError(f"{where}: no row for layer {layer} at {b} bits{more}; the table must list every "
                        f"conv/linear layer of {arch} at every width the search can give it")
    return table


def scheme_latency(table: Mapping[tuple[str, int], float], scheme: Mapping[str, int]) -> float:
    """Σ median_ms over the table's layers at the scheme's widths (ms)."""
    return sum(table[(layer, scheme[layer])] for layer in {layer for layer, _ in table})


def metrics_of(arch: str, latency_table: Mapping[tuple[str, int], float] | None = None) -> dict[str, Metric]:
    """{kind: scheme -> value}: size (MiB), bops (GBOPS) and, with a table, latency (ms)."""
    fns: dict[str, Metric] = {"size": lambda s: scheme_stats(arch, s)[0], "bops": lambda s: scheme_stats(arch, s)[1]}
    if latency_table is not None:
        fns["latency"] = lambda s: scheme_latency(latency_table, s)
    return fns


# --------------------------------------------------------------------------- linear costs
@dataclass(frozen=True)
class LinearCost:
    """A metric as ``base + Σ_g delta[g][b_g]``; ``base`` is the all-4-bit value (delta[g][4] = 0)."""

    base: float
    delta: dict[str, dict[int, float]]

    def total(self, choice: Mapping[str, int]) -> float:
        return self.base + sum(self.delta[g][b] for g, b in choice.items())

    def at_uniform(self, bits: int) -> float:
        return self.base + sum(d[bits] for d in self.delta.values())

    def minimum(self) -> float:
        return self.base + sum(min(d.values()) for d in self.delta.values())


def linear_cost(arch: str, groups: Sequence[Group], metric: Metric) -> LinearCost:
    """Each group's cost = the metric change when only that group goes from 4 bits to b."""
    low = uniform_choice(groups, BITS[0])
    base = metric(scheme_of(arch, low))
    delta = {g.act: {b: metric(scheme_of(arch, {**low, g.act: b})) - base for b in BITS} for g in groups}
    return LinearCost(base, delta)


# --------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Constraint:
    """``kind`` in :data:`UNITS`; ``value`` a fraction of lo..hi, or absolute in the kind's unit."""

    kind: str
    value: float
    absolute: bool
    text: str

    def budget(self, cost: LinearCost) -> float:
        if self.absolute:
            return self.value
        lo, hi = cost.at_uniform(BITS[0]), cost.at_uniform(BITS[-1])
        return lo + self.value * (hi - lo)


_VALUE_RE = re.compile(r"^\s*([-+0-9.eE]+)\s*([A-Za-z]*)\s*$")


def parse_value(kind: str, text: str, where: str) -> tuple[float, bool]:
    """(value, absolute) of a budget: a bare fraction in [0, 1], or a positive number with a unit."""
    match = _VALUE_RE.match(text)
    if not match:
        raise HawqError(f"{where}: expected a fraction in [0, 1] or a number with a unit, got {text!r}")
    value = _number(match[1], where)
    unit = match[2].lower()
    example = {"size": "size=6.5MB", "bops": "bops=75GBOPS", "latency": "latency=3.2ms"}[kind]
    if not unit:
        if not 0.0 <= value <= 1.0:
            raise HawqError(f"{where}: a bare number is a fraction of the way from the all-4-bit to the "
                            f"all-8-bit model and must be in [0, 1]; for an absolute budget add the unit "
                            f"(e.g. {example})")
        return value, False
    if unit not in UNIT_SPELLINGS[kind]:
        raise HawqError(f"{where}: unit {match[2]!r} does not fit {kind}; use {UNITS[kind]} (e.g. {example})")
    if value <= 0:
        raise HawqError(f"{where}: an absolute budget must be > 0")
    return value, True


def _kind_of(text: str, where: str) -> tuple[str, str]:
    kind, sep, rest = text.partition("=")
    kind = kind.strip().lower()
    if not sep:
        raise HawqError(f"{where} {text!r}: expected KIND=VALUE with KIND one of {', '.join(UNITS)}")
    if kind not in UNITS:
        raise HawqError(f"{where} {text!r}: unknown constraint {kind!r}; use one of {', '.join(UNITS)}")
    return kind, rest


def parse_constraint(text: str) -> Constraint:
    """``--constraint KIND=VALUE``, e.g. ``bops=0.5``, ``size=6.5MB``, ``latency=3.2ms``."""
    kind, rest = _kind_of(text, "--constraint")
    value, absolute = parse_value(kind, rest, f"--constraint {text}")
    return Constraint(kind, value, absolute, text)


def parse_sweep(text: str) -> list[Constraint]:
    """``--sweep KIND=START:STOP:STEP`` -> one constraint per budget (STOP included)."""
    kind, rest = _kind_of(text, "--sweep")
    parts = rest.split(":")
    if len(parts) != 3:
        raise HawqError(f"--sweep {text!r}: expected KIND=START:STOP:STEP, e.g. bops=0.25:1.0:0.05")
    where = f"--sweep {text}"
    (start, abs1), (stop, abs2) = parse_value(kind, parts[0], where), parse_value(kind, parts[1], where)
    step = _number(re.sub(r"[A-Za-z]+\s*$", "", parts[2]), where)
    if abs1 != abs2 or step <= 0 or stop < start:
        raise HawqError(f"{where}: START and STOP must both be fractions or both absolute, "
                        "STOP >= START and STEP > 0")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    unit = "" if not abs1 else UNITS[kind]
    return [Constraint(kind, round(start + i * step, 10), abs1, f"{kind}={round(start + i * step, 10):g}{unit}")
            for i in range(count)]


# --------------------------------------------------------------------------- ILP
@functools.lru_cache(maxsize=None)
def _silence_highs_banner() -> None:
    """highspy prints a banner on stdout when a process makes its first ``Highs()``; make that one
    with file descriptor 1 pointed at /dev/null (later instances print nothing with msg=False)."""
    try:
        import highspy
    except ImportError:
        return
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _solver():
    import pulp

    _silence_highs_banner()
    highs = pulp.HiGHS(msg=False, gapRel=0.0, gapAbs=0.0, threads=1, primal_feasibility_tolerance=1e-10,
                       mip_feasibility_tolerance=1e-10)
    return highs if highs.available() else pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0, threads=1)


def solve_ilp(omega: Costs, limits: Sequence[tuple[Costs, float]]) -> dict[str, int] | None:
    """Exact minimizer of ``Σ_g omega[g][b_g]`` s.t. ``Σ_g cost[g][b_g] <= budget`` per limit.

    ``omega``: {group: {bits: value}} (its keys are the groups and the widths); ``limits``:
    (cost {group: {bits: value}}, budget) pairs. Returns {group: bits}, or None when infeasible.
    Rows and the objective are scaled to O(1) so the solver's absolute tolerances are negligible.
    """
    import pulp

    groups = list(omega)
    prob = pulp.LpProblem("hawq_mpq", pulp.LpMinimize)
    x = {(g, b): prob.add_variable(f"x_{i}_{b}", cat=pulp.LpBinary) for i, g in enumerate(groups) for b in omega[g]}
    scale = max((abs(v) for d in omega.values() for v in d.values()), default=1.0) or 1.0
    prob += pulp.lpSum(omega[g][b] / scale * x[g, b] for g, b in x)
    for i, g in enumerate(groups):
        prob += pulp.lpSum(x[g, b] for b in omega[g]) == 1, f"one_width_{i}"
    for j, (cost, budget) in enumerate(limits):
        row = max((abs(cost[g][b]) for g, b in x), default=1.0) or 1.0
        prob += pulp.lpSum(cost[g][b] / row * x[g, b] for g, b in x) <= budget / row, f"limit_{j}"
    status = prob.solve(_solver())
    if pulp.LpStatus[status] == "Infeasible":
        return None
    if pulp.LpStatus[status] != "Optimal":
        raise HawqError(f"the MILP solver returned status {pulp.LpStatus[status]!r}")
    return {g: max(omega[g], key=lambda b: x[g, b].value() or 0.0) for g in groups}


# --------------------------------------------------------------------------- search
@dataclass(frozen=True)
class Solution:
    """A solved search: {group: bits}, the full scheme, Σ Ω and every metric's value."""

    choice: dict[str, int]
    scheme: Scheme
    objective: float
    metrics: dict[str, float]


@dataclass
class Problem:
    """The search space of one arch: groups, their Ω and the linear cost of every metric."""

    arch: str
    groups: list[Group]
    omega: dict[str, dict[int, float]]
    costs: dict[str, LinearCost]
    metrics: dict[str, Metric]

    @classmethod
    def build(cls, arch: str, omega: Mapping[str, Mapping[int, float]],
              latency_table: Mapping[tuple[str, int], float] | None = None) -> Problem:
        arch_info(arch)
        groups = free_groups(arch)
        metrics = metrics_of(arch, latency_table)
        costs = {kind: linear_cost(arch, groups, fn) for kind, fn in metrics.items()}
        return cls(arch, groups, group_omega(groups, omega), costs, metrics)

    def cost(self, c: Constraint) -> LinearCost:
        if c.kind not in self.costs:
            raise HawqError(f"constraint {c.text}: a latency constraint needs --latency-table PATH "
                            "(CSV layer,bits,median_ms,p90_ms, e.g. results/layer_latency/<target>/<arch>.csv)")
        return self.costs[c.kind]

    def evaluate(self, choice: Mapping[str, int]) -> Solution:
        scheme = scheme_of(self.arch, choice)
        objective = sum(self.omega[g][b] for g, b in choice.items())
        return Solution(dict(choice), scheme, objective, {k: fn(scheme) for k, fn in self.metrics.items()})

    def solve(self, constraints: Sequence[Constraint]) -> Solution:
        """The Ω-minimal scheme meeting every constraint; HawqError naming the tightest if none."""
        kinds = [c.kind for c in constraints]
        dup = next((k for k in kinds if kinds.count(k) > 1), None)
        if dup:
            raise HawqError(f"more than one {dup} constraint; give each kind once")
        budgets = [(c, self.cost(c), c.budget(self.cost(c))) for c in constraints]
        self._check_each(budgets)
        choice = solve_ilp(self.omega, [(cost.delta, budget - cost.base) for _c, cost, budget in budgets])
        if choice is None:
            raise HawqError(self._joint_message(budgets))
        sol = self.evaluate(choice)
        for c, _cost, budget in budgets:  # the exact metric, not the solver's arithmetic
            if sol.metrics[c.kind] > budget + REL_TOL * abs(budget):
                raise HawqError(f"internal: solution breaks {c.text} ({sol.metrics[c.kind]} > {budget})")
        return sol

    @staticmethod
    def _check_each(budgets) -> None:
        """HawqError for the constraint whose budget lies furthest below its own minimum."""
        short = [((cost.minimum() - budget) / (abs(cost.at_uniform(BITS[-1]) - cost.base) or 1.0), c, cost, budget)
                 for c, cost, budget in budgets if budget < cost.minimum() - REL_TOL * abs(cost.minimum())]
        if short:
            _gap, c, cost, budget = max(short, key=lambda t: t[0])
            unit = UNITS[c.kind]
            raise HawqError(f"constraint {c.text} is infeasible: its budget {budget:.6g} {unit} is below the "
                            f"minimum {cost.minimum():.6g} {unit} (every free layer at its cheapest width; "
                            f"stem, head and residual accumulators stay fixed)")

    @staticmethod
    def _joint_message(budgets) -> str:
        def slack(item):
            _c, cost, budget = item
            return (budget - cost.minimum()) / (abs(cost.at_uniform(BITS[-1]) - cost.base) or 1.0)

        c, cost, budget = min(budgets, key=slack)
        unit = UNITS[c.kind]
        return (f"no scheme meets all constraints at once; the tightest is {c.text} (budget {budget:.6g} {unit}, "
                f"minimum {cost.minimum():.6g} {unit} when it alone is considered)")


# --------------------------------------------------------------------------- outputs
def scheme_json(arch: str, name: str, sol: Solution, budgets: Sequence[tuple[Constraint, float]],
                command: str) -> str:
    """The scheme file: ``{"arch", "source", "schemes": {name: bits}, "mpq": {...}}`` (load_scheme reads it)."""
    doc = {
        "arch": arch,
        "source": f"hawq.mpq: {command}",
        "schemes": {name: sol.scheme},
        "mpq": {
            "objective": sol.objective,
            **{METRIC_KEYS[k]: v for k, v in sol.metrics.items()},
            "constraints": [{"constraint": c.text, "budget": b, "achieved": sol.metrics[c.kind], "unit": UNITS[c.kind]}
                            for c, b in budgets],
            "groups_8bit": [g for g, b in sol.choice.items() if b == 8],
        },
    }
    return json.dumps(doc, indent=1) + "\n"


def bits_string(problem: Problem, choice: Mapping[str, int]) -> str:
    """The free groups' widths in graph order as one string of '4'/'8' characters."""
    return "".join(str(choice[g.act]) for g in problem.groups)


def pareto_flags(points: Sequence[tuple[float, float]]) -> list[bool]:
    """True where no other (cost, objective) point is <= in both and < in one (both minimized) and
    no earlier point is the same (a budget that buys nothing new adds no point)."""
    return [not any(c2 <= c and o2 <= o and (c2 < c or o2 < o) for c2, o2 in points) and (c, o) not in points[:i]
            for i, (c, o) in enumerate(points)]


def sweep_rows(problem: Problem, sweep: Sequence[Constraint], fixed: Sequence[Constraint]) -> list[dict[str, object]]:
    """One row per feasible sweep budget (keys :data:`SWEEP_FIELDS`), Pareto flags over all rows."""
    rows, sols = [], []
    for c in sweep:
        try:
            sol = problem.solve([*fixed, c])
        except HawqError as exc:
            if "infeasible" not in str(exc) and "no scheme" not in str(exc):
                raise
            print(f"skipped {c.text}: {exc}", file=sys.stderr)
            continue
        sols.append((c, sol))
    flags = pareto_flags([(sol.metrics[c.kind], sol.objective) for c, sol in sols])
    for (c, sol), flag in zip(sols, flags):
        rows.append({"kind": c.kind, "fraction": "" if c.absolute else c.value,
                     "budget": c.budget(problem.cost(c)), "objective": sol.objective,
                     "size_mb": sol.metrics["size"], "gbops": sol.metrics["bops"],
                     "latency_ms": sol.metrics.get("latency", ""),
                     "groups_8bit": sum(b == 8 for b in sol.choice.values()), "pareto": flag,
                     "bits": bits_string(problem, sol.choice)})
    return rows


def plot_front(rows: Sequence[dict[str, object]], kind: str, arch: str, path: str) -> None:
    """Σ Ω against the achieved ``kind`` metric, Pareto points joined; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = METRIC_KEYS[kind]
    fig, ax = plt.subplots(figsize=(6, 4))
    front = sorted((float(r[column]), float(r["objective"])) for r in rows if r["pareto"])
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", label="Pareto front (ILP optimum)")
    ax.set_xlabel(f"{kind} ({UNITS[kind]})")
    ax.set_ylabel("Σ Ω (Hessian-weighted weight perturbation)")
    ax.set_yscale("log")
    ax.set_title(f"{arch}: ILP sweep over {kind}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":          # python -m hawq.mpq: the program is hawq.apps.mpq
    from hawq.apps.cli import run_main
    from hawq.apps.mpq import main
    run_main(main)
