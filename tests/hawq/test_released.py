"""The released checkpoints: manifest integrity, `quant_train.py -e` reproduces each recorded top-1
exactly, and the integer reference matches the QAT eval path on every quantized one."""
from __future__ import annotations

import csv
import os

import pytest

from conftest import ROOT
from hawq.data import build_loaders
from hawq.export import export_integer
from hawq.models.restore import load_quant_checkpoint
from hawq.apps.release import RELEASES, evaluate_release, sha256
from hawq.verify import compare

CKPT_DIR = os.path.join(ROOT, "checkpoints")
with open(os.path.join(CKPT_DIR, "MANIFEST.csv")) as f:
    ROWS = list(csv.DictReader(f))


def test_manifest_lists_every_release():
    assert [r["file"] for r in ROWS] == [os.path.basename(d) for d, _ in RELEASES]
    assert {(r["arch"], r["scheme"]) for r in ROWS} == {
        ("resnet20_cifar10", s) for s in ("fp32", "uniform8", "uniform4", "mixed_stage1_8bit", "uniform2")} | {
        ("mobilenetv2_w1", s) for s in ("fp32", "uniform8")} | {("torchvision:resnet18", "fp32")} | {
        ("torchvision:mobilenet_v3_small", s) for s in ("fp32", "uniform8")} | {
        ("hawq:bireal_resnet20", s) for s in ("fp32", "binary")}
    ort = [r["file"] for r in ROWS if "--numerics ort" in r["command"]]
    assert ort == ["resnet20_cifar10_uniform8_ort.pth.tar", "mobilenetv2_w1_uniform8_ort.pth.tar"]
    for r in ROWS:
        path = os.path.join(CKPT_DIR, r["file"])
        assert sha256(path) == r["sha256"], r["file"]
        limit = {"resnet20_cifar10": 4, "hawq:bireal_resnet20": 4, "torchvision:resnet18": 45}.get(r["arch"], 25)   # MiB; 11.2M weights
        assert os.path.getsize(path) < limit * 2 ** 20
        assert r["command"].startswith("python quant_train.py ") and f"--quant-scheme {r['scheme']}" in r["command"]


#: Full 10k-image evaluations of 20-40 s each: the fast suite reproduces the FP rows (every quantized
#: file is checked against the integer reference below, and `make demo` evaluates a QAT model); the
#: quantized rows are slow.
FAST_TOP1 = {"resnet20_cifar10_fp32.pth.tar", "mobilenetv2_w1_fp32.pth.tar"}


@pytest.mark.parametrize("row", [r if r["file"] in FAST_TOP1 else pytest.param(r, marks=pytest.mark.slow)
                                 for r in ROWS], ids=[r["file"] for r in ROWS])
def test_evaluate_reproduces_manifest_top1(row, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)          # evaluation writes its artifact under runs/; keep the tree clean
    top1 = evaluate_release(os.path.join(CKPT_DIR, row["file"]), row["scheme"], row["arch"])
    assert f"{top1:.2f}" == row["top1"]


@pytest.mark.parametrize("row", [r for r in ROWS if r["scheme"] != "fp32"], ids=lambda r: r["file"])
def test_integer_reference_matches_released(row):
    model, _ = load_quant_checkpoint(os.path.join(CKPT_DIR, row["file"]))
    data = build_loaders("fashion-mnist", None, 100, 0, 1.0, 0, eval_limit=200)
    art = export_integer(model, (3, 32, 32))
    r = compare(model, art["graph"], data.val, progress=False)
    assert r["mismatches"] == 0 and r["logits"] == 2000
    assert r["ref_top1"] == r["qat_top1"] > 60.0

