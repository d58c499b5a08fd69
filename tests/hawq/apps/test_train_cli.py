"""End-to-end quant_train.py runs on tiny subsets of Fashion-MNIST: FP -> QAT -> export -> verify,
exact resume, HAWQ-layout checkpoints, and one-line errors for bad input."""
from __future__ import annotations

import hashlib
import os
import random

import pytest
import torch

from conftest import RELEASED_FP, TINY_TRAIN, cli, needs_fmnist
from hawq.apps.train import run

pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def fp_ckpt():
    """The released floating-point checkpoint (QAT starts from a trained model, as users do)."""
    assert os.path.isfile(RELEASED_FP), RELEASED_FP
    return RELEASED_FP


def test_fp_training_run(tmp_path):
    res = run(["--quant-scheme", "fp32", "--epochs", "1", "--lr", "0.05", "--save-path", str(tmp_path), *TINY_TRAIN])
    ck = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert ck["quant_scheme"] == "fp32" and "features.init_block.conv.weight" in ck["state_dict"]
    assert res["best_top1"] == ck["best_acc1"]


@pytest.fixture(scope="module")
def qat_run(fp_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("u8")
    summary = run(["--quant-scheme", "uniform8", "--epochs", "1", "--lr", "0.005", "--fix-BN", "--pretrained", fp_ckpt,
                   "--save-path", str(out), *TINY_TRAIN])
    return out, summary


def test_qat_run_writes_everything(qat_run):
    out, summary = qat_run
    for f in ("checkpoint.pth.tar", "model_best.pth.tar", "log.csv", "quantized_checkpoint.pth.tar"):
        assert (out / f).is_file(), f
    ck = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert {"epoch", "arch", "quant_scheme", "state_dict", "optimizer", "best_acc1", "args"} <= set(ck)
    assert ck["epoch"] == 1 and ck["arch"] == "resnet20_cifar10" and ck["quant_scheme"] == "uniform8"
    art = torch.load(out / "quantized_checkpoint.pth.tar", weights_only=True)
    for key in ("weight_integer", "bias_integer", "convbn_scaling_factor", "fc_scaling_factor", "act_scaling_factor"):
        assert art[key], key
    assert summary["best_top1"] > 30.0          # 10 classes: clearly learned something
    header = (out / "log.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,lr,train_loss,train_top1,val_loss,val_top1")


def test_evaluate_reproduces_recorded_top1(qat_run):
    out, summary = qat_run
    res = run(["-e", "--resume", str(out / "model_best.pth.tar"), "--resume-quantize", "--quant-scheme", "uniform8",
               "--save-path", str(out / "eval"), *TINY_TRAIN])
    assert res["top1"] == pytest.approx(summary["best_top1"], abs=1e-9)


def test_verify_cli_reports_zero_mismatches(qat_run):
    out, _ = qat_run
    r = cli("-m", "hawq.verify", "--checkpoint", str(out / "model_best.pth.tar"),
            "--artifact", str(out / "quantized_checkpoint.pth.tar"), "--limit", "64", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "mismatches: 0/640"


def test_resume_continues_the_uninterrupted_run(fp_ckpt, tmp_path):
    # The step schedule's rate does not depend on --epochs (a per-step cosine does), so a 1-epoch run
    # is the first epoch of the 2-epoch one.
    common = ["--quant-scheme", "uniform4", "--lr", "0.01", "--fix-BN", "--pretrained", fp_ckpt, *TINY_TRAIN,
              "--lr-schedule", "step"]
    run(["--epochs", "2", "--save-path", str(tmp_path / "straight"), *common])
    run(["--epochs", "1", "--save-path", str(tmp_path / "split"), *common])
    run(["--epochs", "2", "--resume", str(tmp_path / "split" / "checkpoint.pth.tar"), "--resume-quantize",
         "--save-path", str(tmp_path / "split"), *common])
    a = torch.load(tmp_path / "straight" / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert a["best_acc1"] == b["best_acc1"]


def test_hawq_layout_checkpoint_loads(qat_run, tmp_path):
    """A checkpoint in HAWQ-V3's layout (module. prefix, float integer buffers, none of our extra keys,
    no quant_scheme) evaluates exactly like ours."""
    out, summary = qat_run
    ours = torch.load(out / "model_best.pth.tar", weights_only=True)
    sd = {}
    for k, v in ours["state_dict"].items():
        if k.endswith(("act_zero_point", "fold_step")):
            continue
        sd["module." + k] = v.float() if k.endswith(("weight_integer", "bias_integer")) else v
    hawq = {"epoch": 1, "arch": "resnet20_cifar10", "state_dict": sd, "best_acc1": torch.tensor(0.0),
            "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "hawq_checkpoint.pth.tar"
    torch.save(hawq, path)
    # No profile recorded: HAWQ's arithmetic is inferred (said in one line); --numerics exact gives ours back.
    r = cli("quant_train.py", "-e", "--resume", str(path), "--resume-quantize", "--quant-scheme", "uniform8",
            "--save-path", str(tmp_path / "h"), *TINY_TRAIN)
    assert r.returncode == 0, r.stderr[-800:]
    assert sum("records no numeric profile" in line and "--numerics hawq" in line
               for line in r.stdout.splitlines()) == 1, r.stdout
    res = run(["-e", "--resume", str(path), "--resume-quantize", "--quant-scheme", "uniform8", "--numerics", "exact",
               "--save-path", str(tmp_path / "e"), *TINY_TRAIN])
    assert res["top1"] == pytest.approx(summary["best_top1"], abs=1e-9)


class Evil:
    """Anything that is not a tensor/container needs pickled code to load."""


def _bad_checkpoints(tmp_path, fp_ckpt) -> dict:
    raw = open(fp_ckpt, "rb").read()
    paths = {}
    paths["corrupt"] = tmp_path / "corrupt.pth.tar"
    paths["corrupt"].write_bytes(random.Random(0).randbytes(4096))   # seeded: reproducible garbage
    paths["truncated"] = tmp_path / "truncated.pth.tar"
    paths["truncated"].write_bytes(raw[: len(raw) // 2])
    paths["foreign"] = tmp_path / "foreign.pth.tar"
    torch.save({"weights": [1, 2, 3]}, paths["foreign"])
    paths["pickled_code"] = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": Evil()}, paths["pickled_code"])
    return paths


def test_bad_input_one_line_error_and_nothing_overwritten(fp_ckpt, tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    sentinel = save / "checkpoint.pth.tar"
    sentinel.write_bytes(b"previous run")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{'quant_input': 8,")
    empty = tmp_path / "empty"
    empty.mkdir()
    ck = _bad_checkpoints(tmp_path, fp_ckpt)
    base = ["quant_train.py", "--epochs", "1", "--save-path", str(save), *TINY_TRAIN]
    cases = {
        "arch": (["-a", "resnet999"], "unknown arch"),
        "scheme": (["--quant-scheme", "bops_0.33"], "bops_0.33"),
        "json": (["--quant-scheme", str(bad_json)], "bad.json"),
        "data_missing": (["--data", str(tmp_path / "nope")], "nope"),
        "data_empty": (["--data", str(empty)], "empty"),
        "corrupt": (["--resume", str(ck["corrupt"])], "corrupt"),
        "truncated": (["--resume", str(ck["truncated"])], "truncated"),
        "foreign": (["--resume", str(ck["foreign"])], "state_dict"),
        "pickled": (["--resume", str(ck["pickled_code"])], "pickled code"),
        "wrong_arch": (["-a", "resnet18", "--resume", fp_ckpt, "--quant-scheme", "fp32"], "resnet20_cifar10"),
        "fp_as_quant": (["--resume", fp_ckpt, "--resume-quantize"], "floating-point"),
    }
    before = hashlib.sha256(sentinel.read_bytes()).hexdigest()
    for name, (extra, needle) in cases.items():
        r = cli(*base, *extra)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr[-800:])
        assert len(err) == 1 and err[0].startswith("error: "), (name, r.stderr[-800:])
        assert needle in err[0], (name, err[0])
        assert "Traceback" not in r.stderr
    assert hashlib.sha256(sentinel.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in save.iterdir()) == ["checkpoint.pth.tar"]


def test_verify_rejects_fp_checkpoint(fp_ckpt):
    r = cli("-m", "hawq.verify", "--checkpoint", fp_ckpt)
    assert r.returncode == 2 and "floating-point" in r.stderr and "Traceback" not in r.stderr


def test_pretrained_download_failure_is_one_clear_error(monkeypatch):
    from hawq.errors import HawqError
    from hawq.models import factory

    def offline(*a, **k):
        raise ConnectionError("Max retries exceeded")
    monkeypatch.setattr(factory, "build_fp_model", offline)
    with pytest.raises(HawqError, match="pretrained weights for 'resnet18'.*offline"):
        factory.fp_model("resnet18", 10, pretrained=True)


def test_distillation_and_featuremap_dump(fp_ckpt, tmp_path):
    res = run(["--quant-scheme", "uniform8", "--epochs", "1", "--lr", "0.002", "--fix-BN", "--pretrained", fp_ckpt,
               "--distill-method", "KD_naive", "--teacher-arch", "resnet20_cifar10", "--teacher-pretrained", fp_ckpt,
               "--checkpoint-iter", "2", "--save-path", str(tmp_path), *TINY_TRAIN])
    assert res["best_top1"] > 50.0            # starts from a trained model and distills from it
    maps = torch.load(tmp_path / "featuremaps_iter2.pth.tar", weights_only=True)
    assert "quant_input" in maps and "stage3.unit3.quant_act_int32" in maps
    assert maps["stage1.unit1.quant_act"].dtype == torch.int64     # integer feature maps (eval path)
