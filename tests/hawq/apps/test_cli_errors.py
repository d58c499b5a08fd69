"""The shared CLI convention (hawq.apps.cli) and bad input a new user runs into: every entry point answers
with one ``error: ...`` line (exit 2), unreadable ImageFolder images are skipped and counted."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cli
from hawq import data as D
from hawq.apps.cli import add_arch_arg, resolve_dataset, run_main
from hawq.errors import HawqError


def image_folder(root: Path, classes: int, bad: dict[str, list[str]] | None = None) -> Path:
    """``root/{train,val}/c<k>/good.png`` (8x8), plus the unreadable files ``bad[split]`` (``c0/name``)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "good.png")
        for name in (bad or {}).get(split, []):
            path = root / split / name
            if name.endswith(".png"):   # a PNG cut in half: PIL opens it, then fails to decode (OSError)
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
                path.write_bytes(path.read_bytes()[:60])
            else:                       # not an image at all: PIL.UnidentifiedImageError
                path.write_bytes(b"this is not a JPEG" * 8)
    return root


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: skipped")]


# --------------------------------------------------------------------------- the helper itself
def test_run_main_exit_status_and_one_line_errors(capsys):
    def raises(exc):
        def main(argv=None):
            raise exc
        return main
    cases = [(lambda argv=None: 1, 1, ""), (lambda argv=None: 0, 0, ""), (lambda argv=None: [{"row": 1}], 0, ""),
             (lambda argv=None: None, 0, ""), (raises(HawqError("bad flag")), 2, "error: bad flag"),
             (raises(FileNotFoundError(2, "No such file or directory", "x.csv")), 2,
              "error: No such file or directory: x.csv"),
             (raises(KeyboardInterrupt()), 130, "error: interrupted")]
    for main, code, err in cases:
        with pytest.raises(SystemExit) as exc:
            run_main(main)
        assert exc.value.code == code
        assert capsys.readouterr().err.strip() == err


def test_resolve_dataset():
    assert resolve_dataset(None, None) == "fashion-mnist"
    assert resolve_dataset(None, "/data/imagenet") == "imagenet"
    assert resolve_dataset("fashion-mnist", "/data/fmnist") == "fashion-mnist"
    assert resolve_dataset(None, "/data/fmnist", recorded="fashion-mnist") == "fashion-mnist"
    assert resolve_dataset("imagenet", None, recorded="fashion-mnist") == "imagenet"
    assert resolve_dataset(None, None, recorded="imagenet") == "imagenet"


def test_arch_arg_is_checked_while_parsing():
    import argparse
    p = argparse.ArgumentParser()
    add_arch_arg(p, ["resnet18"], nargs="+")
    assert p.parse_args([]).arch == ["resnet18"]
    assert p.parse_args(["-a", "resnet50", "resnet20_cifar10"]).arch == ["resnet50", "resnet20_cifar10"]
    with pytest.raises(HawqError, match=r"^unknown arch 'resnet19'; supported: resnet18, "):
        p.parse_args(["-a", "resnet18", "resnet19"])


ENTRY_POINTS = [
    ("hawq.apps.train", []), ("hawq.apps.sensitivity", ["--out", "x.csv"]),
    ("hawq.apps.mpq", ["--sensitivity", "s.csv", "--out", "x.json"]), ("hawq.benchmarks.qat_overhead", []),
    ("hawq.apps.demo", []), ("hawq.apps.verify", ["--checkpoint", "missing.pth.tar"]),
    ("hawq.apps.bit_config", ["--table"]),
    ("tvm_benchmark.apps.export", ["--checkpoint", "missing.pth.tar", "--out", "o"]),
    ("tvm_benchmark.apps.verify", ["--checkpoint", "missing.pth.tar"]), ("tvm_benchmark.apps.layer_latency", []),
    ("tvm_benchmark.apps.bench", []), ("hawq.apps.ptq", ["--pretrained", "fp.pth.tar"]),
]


@pytest.mark.parametrize("module,argv", ENTRY_POINTS, ids=[m for m, _ in ENTRY_POINTS])
def test_every_entry_point_rejects_an_unknown_arch_the_same_way(module, argv, capsys, tmp_path, monkeypatch):
    if module.startswith("tvm_benchmark"):
        pytest.importorskip("tvm")
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["-a", "resnet7", *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: unknown arch 'resnet7'; supported: resnet18, resnet50, resnet50b, resnet101, resnet20_cifar10, "
        "regnetx006, mobilenetv2_w1, inceptionv3, torchvision:NAME, timm:NAME, path/to/file.py:FUNCTION"]
    assert list(tmp_path.iterdir()) == []


def test_tvm_program_dataset_follows_the_checkpoint_before_data():
    """tvm_benchmark.verify --data DIR on a Fashion-MNIST checkpoint: the recorded dataset, as hawq.verify."""
    pytest.importorskip("tvm")
    from hawq.program import load_program
    prog = load_program(os.path.join(ROOT, "checkpoints", "resnet20_cifar10_uniform8.pth.tar"),
                        data="/some/fmnist/dir")
    assert (prog.dataset, prog.input_chw) == ("fashion-mnist", (3, 32, 32))


# --------------------------------------------------------------------------- unreadable images
@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_skipped_and_counted_once_per_pass(tmp_path, capsys, workers):
    bad = ["c0/a_garbage.jpg", "c0/b_truncated.png"]
    root = image_folder(tmp_path / "imnet", 2, {"train": bad, "val": bad})
    b = D.build_loaders("imagenet", str(root), 2, workers, 1.0, seed=0)
    assert b.train.dataset_size == b.val.dataset_size == 4 and b.num_classes == 2
    # val is in file order: [a_garbage, b_truncated] is a whole unreadable batch (skipped), then c0/good, c1/good
    batches = [y.tolist() for _, y in b.val]
    assert batches == [[0, 1]]
    assert warnings_of(capsys.readouterr().err) == [
        f"warning: skipped 2 unreadable images in {root / 'val'} (first: {root / 'val' / bad[0]})"]
    for epoch in range(2):   # every pass reports its own count
        b.train.set_epoch(epoch)
        ys = sorted(int(v) for _, y in b.train for v in y)
        assert ys == [0, 1]
        (line,) = warnings_of(capsys.readouterr().err)
        assert line.startswith(f"warning: skipped 2 unreadable images in {root / 'train'} (first: {root / 'train'}/c0/")


def test_no_readable_image_is_one_error(tmp_path, capsys):
    root = image_folder(tmp_path / "imnet", 1, {"val": ["c0/x.jpg"]})
    (root / "val" / "c0" / "good.png").unlink()
    b = D.build_loaders("imagenet", str(root), 4, 0, 1.0, seed=0)
    with pytest.raises(HawqError, match=r"^no readable image in .*val: all 1 unreadable \(first: .*x\.jpg\)$"):
        list(b.val)


def test_quant_train_skips_an_unreadable_image(tmp_path):
    """A garbage .jpg in an ImageFolder: was a PIL.UnidentifiedImageError traceback mid-epoch."""
    root = image_folder(tmp_path / "imnet", 10, {"train": ["c0/broken.jpg"]})
    r = cli("quant_train.py", "--data", str(root), "--quant-scheme", "fp32", "--epochs", "1", "-b", "4", "-j", "2",
            "--no-progress", "--save-path", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    assert warnings_of(r.stderr) == [f"warning: skipped 1 unreadable images in {root / 'train'} "
                                     f"(first: {root / 'train' / 'c0' / 'broken.jpg'})"]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("recipe: 1 epochs, sgd lr 0.003125 (step, warm-up 0.05 epochs), batch 4")
    assert lines[1].startswith("epoch 0: ")
    assert (tmp_path / "run" / "checkpoint.pth.tar").is_file()


def one_line_error(r) -> str:
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-1500:]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-1500:]
    return err[0]


def test_cifar_arch_on_a_two_class_image_folder(tmp_path):
    """pytorchcv asserts num_classes in [10, 100] for its CIFAR ResNets: was a bare AssertionError traceback."""
    root = image_folder(tmp_path / "imnet", 2)
    r = cli("quant_train.py", "-a", "resnet20_cifar10", "--data", str(root), "--quant-scheme", "fp32",
            "--epochs", "1", "-j", "0", "--no-progress", "--save-path", str(tmp_path / "run"))
    err = one_line_error(r)
    assert "resnet20_cifar10" in err and "10 or 100 classes" in err and "2" in err
    assert not (tmp_path / "run").exists()
    from hawq.models.layers import build_fp_model
    with pytest.raises(HawqError, match="resnet20_cifar10 takes 10 or 100 classes, the dataset has 7"):
        build_fp_model("resnet20_cifar10", 7)
    assert build_fp_model("resnet20_cifar10", 100).output.out_features == 100


def test_save_path_naming_an_existing_file(tmp_path):
    """--save-path FILE: was a FileExistsError traceback after training."""
    root = image_folder(tmp_path / "imnet", 10)
    target = tmp_path / "notes.txt"
    target.write_bytes(b"keep me")
    r = cli("quant_train.py", "--data", str(root), "--quant-scheme", "fp32", "--epochs", "1", "-j", "0",
            "--no-progress", "--save-path", str(target))
    err = one_line_error(r)
    assert str(target) in err and "exists and is not a directory" in err
    assert target.read_bytes() == b"keep me"
