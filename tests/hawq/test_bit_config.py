"""Layer inventory, bit_config loading/validation, and size/BOPS counts."""
from __future__ import annotations

import json

import re

import pytest

from conftest import cli
from hawq import bit_config as bc
from hawq.errors import HawqError
from hawq.models.layers import ARCHS, build_fp_model, quant_layers

PUBLISHED = [(arch, name) for arch in ARCHS for name in bc.list_schemes(arch)]


def _json_schemes(arch: str) -> dict[str, dict[str, int]]:
    return json.loads((bc.BIT_CONFIG_DIR / f"{arch}.json").read_text())["schemes"]


def _is_stem_or_head(name: str) -> bool:
    return not name.startswith("stage")


def _first_layer(arch: str, kind: str) -> str:
    return next(spec.name for spec in quant_layers(arch) if spec.kind == kind and spec.name.startswith("stage"))


# --------------------------------------------------------------------------- layer inventory
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_has_a_json_with_its_exact_layer_names_in_order(arch):
    names = [spec.name for spec in quant_layers(arch)]
    for scheme in _json_schemes(arch).values():
        assert list(scheme) == names


def test_inventory_of_resnet18():
    layers = quant_layers("resnet18")
    by_name = {spec.name: spec for spec in layers}
    assert len(layers) == 48
    assert sum(spec.macs for spec in layers) == 1_814_073_344
    init = by_name["quant_init_block_convbn"]
    assert (init.weight_numel, init.macs, init.input_act) == (64 * 3 * 7 * 7, 112 * 112 * 64 * 3 * 49, "quant_input")
    out = by_name["quant_output"]
    assert (out.kind, out.weight_numel, out.macs, out.input_act) == ("linear", 512_000, 512_000, "quant_act_output")
    ident = by_name["stage2.unit1.quant_identity_convbn"]
    assert (ident.macs, ident.input_act) == (28 * 28 * 128 * 64, "stage2.unit1.quant_act")
    assert by_name["stage2.unit1.quant_convbn2"].input_act == "stage2.unit1.quant_act1"
    assert by_name["stage1.unit1.quant_act_int32"].kind == "act_int32"


@pytest.mark.parametrize("arch", ARCHS)
def test_inventory_is_consistent(arch):
    seen_acts = set()
    for spec in quant_layers(arch):
        assert spec.kind in bc.ALLOWED_BITS
        if spec.kind in ("act", "act_int32"):
            assert (spec.weight_numel, spec.macs, spec.input_act) == (0, 0, None)
            seen_acts.add(spec.name)
        else:
            assert spec.weight_numel > 0 and spec.macs > 0
            assert spec.input_act in seen_acts  # fed by an earlier activation quantizer
    if ARCHS[arch].init_conv is not None:        # the ResNet family names its stem conv
        assert quant_layers(arch)[1].name == ARCHS[arch].init_conv


def test_bottleneck_arch_feeds_convbn3_from_act2():
    spec = next(s for s in quant_layers("resnet50") if s.name == "stage1.unit1.quant_convbn3")
    assert spec.input_act == "stage1.unit1.quant_act2"


def test_quant_layers_returns_a_fresh_list():
    quant_layers("resnet18").clear()
    assert len(quant_layers("resnet18")) == 48


def test_build_fp_model_and_unknown_arch():
    model = build_fp_model("resnet20_cifar10")
    assert model.output.out_features == 10
    with pytest.raises(HawqError, match=r"unknown arch 'resnet19'; supported: resnet18, "):
        build_fp_model("resnet19")
    with pytest.raises(HawqError, match="unknown arch"):
        quant_layers("resnet19")


# --------------------------------------------------------------------------- published schemes
@pytest.mark.parametrize(("arch", "scheme"), PUBLISHED)
def test_every_published_scheme_validates(arch, scheme):
    assert bc.load_scheme(arch, scheme) == _json_schemes(arch)[scheme]


@pytest.mark.parametrize("arch", ARCHS)
def test_uniform4_is_4bit_in_the_middle_8bit_stem_and_head(arch):
    bits = bc.load_scheme(arch, "uniform4")
    weights = [s for s in quant_layers(arch) if s.kind in ("conv", "linear")]
    ends = {weights[0].name, weights[0].input_act, weights[-1].name, weights[-1].input_act}
    for spec in quant_layers(arch):
        expected = 16 if spec.kind == "act_int32" else 8 if spec.name in ends else 4
        assert bits[spec.name] == expected, spec.name


def test_resnet20_json_is_exactly_generated_from_the_inventory():
    def scheme(stage_bits):
        return {
            spec.name: 16 if spec.kind == "act_int32"
            else 8 if _is_stem_or_head(spec.name)
            else stage_bits(spec.name.split(".")[0])
            for spec in quant_layers("resnet20_cifar10")
        }

    kinds = {spec.name: spec.kind for spec in quant_layers("resnet20_cifar10")}
    data = json.loads((bc.BIT_CONFIG_DIR / "resnet20_cifar10.json").read_text())
    assert data["arch"] == "resnet20_cifar10" and "project-made" in data["source"]
    assert data["schemes"] == {
        "uniform8": scheme(lambda stage: 8),
        "uniform4": scheme(lambda stage: 4),
        "mixed_stage1_8bit": scheme(lambda stage: 8 if stage == "stage1" else 4),
        "uniform2": scheme(lambda stage: 2),
        "w1a2": {n: 1 if b == 2 and kinds[n] in ("conv", "linear") else b for n, b in scheme(lambda stage: 2).items()},
        "w1a1": {n: 1 if b == 2 else b for n, b in scheme(lambda stage: 2).items()},
    }


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("size0.5", "modelsize_0.5"),
        ("bops0.25", "bops_0.25"),
        ("latency0.75", "latency_0.75"),
        ("bit_config_resnet18_uniform8", "uniform8"),
        ("bit_config_resnet18_bops0.5", "bops_0.5"),
    ],
)
def test_hawq_aliases(alias, name):
    assert bc.load_scheme("resnet18", alias) == bc.load_scheme("resnet18", name)


# --------------------------------------------------------------------------- size / BOPS
@pytest.mark.parametrize(
    ("arch", "scheme", "size_mib", "size_tol", "gbops", "gbops_tol"),
    [
        ("resnet18", "uniform8", 11.15, 0.05, 116, 1),
        ("resnet50", "uniform4", 13.1, 0.1, 67, 1),
        ("resnet18", "bops_0.5", 6.49, 0.02, 74.2, 0.2),
    ],
)
def test_size_and_bops(arch, scheme, size_mib, size_tol, gbops, gbops_tol):
    size, bops = bc.scheme_stats(arch, bc.load_scheme(arch, scheme))
    assert size == pytest.approx(size_mib, abs=size_tol)
    assert bops == pytest.approx(gbops, abs=gbops_tol)


def test_bops_use_the_feeding_activation_bits():
    bits = bc.load_scheme("resnet18", "uniform8")
    size8, bops8 = bc.scheme_stats("resnet18", bits)
    act = "stage1.unit1.quant_act1"
    size, bops = bc.scheme_stats("resnet18", {**bits, act: 4})
    conv2 = next(s for s in quant_layers("resnet18") if s.name == "stage1.unit1.quant_convbn2")
    assert size == size8
    assert bops == pytest.approx(bops8 - conv2.macs * 8 * 4 / 1e9)


def test_paper_figures_name_published_schemes_and_roughly_agree():
    for arch, figures in bc.PAPER_FIGURES.items():
        for scheme, (paper_size, paper_gbops) in figures.items():
            size, gbops = bc.scheme_stats(arch, bc.load_scheme(arch, scheme))
            assert size == pytest.approx(paper_size, rel=0.05), (arch, scheme)
            assert gbops == pytest.approx(paper_gbops, rel=0.05), (arch, scheme)


def test_table_rows():
    rows = bc.table_rows()
    assert len(rows) == len(PUBLISHED)
    assert all(tuple(row) == bc.TABLE_COLUMNS for row in rows)
    [row] = bc.table_rows("resnet18", "bops0.5")
    assert row == {"arch": "resnet18", "scheme": "bops_0.5", "size_mb": 6.487, "gbops": 74.17,
                   "paper_size_mb": 6.7, "paper_gbops": 72}
    assert bc.table_rows("resnet50b", "uniform8")[0]["paper_gbops"] is None
    with pytest.raises(HawqError, match="needs an arch"):
        bc.table_rows(scheme="uniform8")


# --------------------------------------------------------------------------- validation errors
def _uniform8(arch="resnet18"):
    return bc.load_scheme(arch, "uniform8")


def test_missing_layer_is_named():
    bits = _uniform8()
    del bits["stage1.unit1.quant_convbn1"]
    with pytest.raises(HawqError, match=r"^bit_config for resnet18: layer 'stage1\.unit1\.quant_convbn1' is missing$"):
        bc.validate_scheme("resnet18", bits)


def test_unknown_layer_is_named():
    bits = {**_uniform8(), "stage9.unit1.quant_act": 8}
    with pytest.raises(HawqError, match=r"unknown layer 'stage9\.unit1\.quant_act'"):
        bc.validate_scheme("resnet18", bits)


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("conv", 16, "has 16 bits; allowed: 1, 2, 3, 4, 5, 6, 7, 8"),
        ("act", 9, "has 9 bits; allowed: 1, 2, 3, 4, 5, 6, 7, 8"),
        ("act", 0, "has 0 bits; allowed: 1, 2, 3, 4, 5, 6, 7, 8"),
        ("act_int32", 8, "has 8 bits; allowed: 16"),
        ("conv", "8", "non-integer bits '8'"),
        ("act", 8.0, "non-integer bits 8.0"),
        ("conv", True, "non-integer bits True"),
    ],
)
def test_bad_bits_are_named(kind, value, message):
    layer = _first_layer("resnet18", kind)
    with pytest.raises(HawqError) as err:
        bc.validate_scheme("resnet18", {**_uniform8(), layer: value})
    assert f"layer {layer!r}" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(("layer", "part"), [("quant_init_block_convbn", "the stem (it reads the image)"),
                                             ("quant_output", "the classifier")])
def test_binary_stem_and_head_are_refused(layer, part):
    with pytest.raises(HawqError, match=rf"layer '{layer}' is {re.escape(part)} and cannot be 1-bit"):
        bc.validate_scheme("resnet18", {**_uniform8(), layer: 1})
    assert bc.validate_scheme("resnet18", {**_uniform8(), _first_layer("resnet18", "conv"): 1})


def test_unknown_scheme_lists_available_ones():
    with pytest.raises(HawqError, match=r"no scheme or JSON file 'uniform6'; available schemes: uniform8, uniform4, "):
        bc.load_scheme("resnet18", "uniform6")
    with pytest.raises(HawqError, match="available schemes: uniform8, uniform4, mixed_stage1_8bit"):
        bc.load_scheme("resnet20_cifar10", "/nonexistent/scheme.json")


# --------------------------------------------------------------------------- JSON files
@pytest.mark.parametrize(
    "wrap",
    [
        lambda bits: bits,
        lambda bits: {"arch": "resnet20_cifar10", "bit_config": bits},
        lambda bits: {"arch": "resnet20_cifar10", "schemes": {"mine": bits}},
        lambda bits: {"schemes": {"mine": bits}},
    ],
    ids=["flat", "bit_config", "schemes", "schemes-no-arch"],
)
def test_json_file_round_trip(tmp_path, wrap):
    bits = bc.load_scheme("resnet20_cifar10", "mixed_stage1_8bit")
    bits["stage3.unit3.quant_convbn2"] = 8
    path = tmp_path / "my_scheme.json"
    path.write_text(json.dumps(wrap(bits)))
    assert bc.load_scheme("resnet20_cifar10", str(path)) == bits
    assert bc.load_scheme("resnet20_cifar10", path) == bits
    [row] = bc.table_rows("resnet20_cifar10", str(path))
    size, gbops = bc.scheme_stats("resnet20_cifar10", bits)
    assert (row["scheme"], row["size_mb"], row["gbops"]) == ("my_scheme", round(size, 3), round(gbops, 2))
    assert row["paper_size_mb"] is None


def test_json_file_errors(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"quant_input": 8,,}')
    with pytest.raises(HawqError) as err:
        bc.load_scheme("resnet18", str(bad))
    message = str(err.value)
    assert str(bad) in message and "invalid JSON: Expecting property name" in message and "\n" not in message

    other_arch = tmp_path / "other.json"
    other_arch.write_text(json.dumps({"arch": "resnet50", "bit_config": _uniform8()}))
    with pytest.raises(HawqError, match="is for arch 'resnet50', not 'resnet18'"):
        bc.load_scheme("resnet18", str(other_arch))

    two = tmp_path / "two.json"
    two.write_text(json.dumps({"schemes": {"a": _uniform8(), "b": _uniform8()}}))
    with pytest.raises(HawqError, match="exactly one scheme, found: a, b"):
        bc.load_scheme("resnet18", str(two))

    bad_bits = tmp_path / "bad_bits.json"
    bad_bits.write_text(json.dumps({**_uniform8(), "quant_output": 9}))
    with pytest.raises(HawqError, match=rf"\({bad_bits}\): layer 'quant_output' \(linear\) has 9 bits"):
        bc.load_scheme("resnet18", str(bad_bits))


# --------------------------------------------------------------------------- CLI
def test_cli_table_lists_every_scheme():
    result = cli("bit_config.py", "--table", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "arch,scheme,size_mb,gbops,paper_size_mb,paper_gbops"
    assert len(lines) == 1 + len(PUBLISHED)
    assert "resnet18,bops_0.5,6.487,74.17,6.7,72" in lines
    assert "resnet101,uniform4,22.173,126.89,," in lines


@pytest.mark.parametrize(
    "args",
    [("--table", "-a", "resnet19"), ("--table", "-a", "resnet18", "--quant-scheme", "broken.json"), ()],
    ids=["unknown-arch", "malformed-json", "no-mode"],
)
def test_cli_errors_are_one_line(tmp_path, args):
    (tmp_path / "broken.json").write_text("{")
    args = tuple(str(tmp_path / a) if a.endswith(".json") else a for a in args)
    result = cli("bit_config.py", *args, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_cli_in_process(capsys, tmp_path):
    import bit_config as cli  # the repo-root script

    path = tmp_path / "u8.json"
    path.write_text(json.dumps(_uniform8("resnet50b")))
    assert cli.main(["--table", "-a", "resnet50b", "--quant-scheme", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "resnet50b,u8,24.321,261.71,,"
    assert cli.main(["--list", "-a", "resnet20_cifar10"]) == 0
    assert capsys.readouterr().out == "resnet20_cifar10: uniform8 uniform4 mixed_stage1_8bit uniform2 w1a2 w1a1\n"
