"""`make demo` tells a story, and it must stay true (issue 33): the FP baseline learns, QAT from it
keeps its accuracy (QAT >= FP - 0.5 points), and the NumPy integer reference agrees with the QAT
model's integer eval path on every logit."""
from __future__ import annotations

import pytest

from hawq.apps.demo import MAX_QAT_DROP, run_demo


def _check_story(r, fp_floor: float, ref_images: int) -> None:
    assert r.fp_top1 > fp_floor, f"FP baseline top-1 {r.fp_top1:.2f} <= {fp_floor}"
    assert r.qat_top1 >= r.fp_top1 - MAX_QAT_DROP, f"QAT {r.qat_top1:.2f} vs FP {r.fp_top1:.2f}"
    assert r.ref_images == ref_images and r.logits == ref_images * 10
    assert r.mismatches == 0 and r.ref_top1 == r.qat_top1_on_ref
    assert r.story_holds


def test_demo_story_on_a_subset(tmp_path, capsys):
    """The demo's pipeline on 5 % of the training set (24 steps per epoch), 2000 test images.
    Measured 2026-12-06 (Intel Xeon, AVX-512): FP 64.25, QAT 65.85. The floor of 55 sits below that
    by more than machines' float differences move it and above what the regressed recipe gave (the
    full demo: 50.22)."""
    r = run_demo(out=str(tmp_path), data_percentage=0.05, eval_limit=2000, ref_images=200, progress=False)
    out = capsys.readouterr().out
    assert "BN running statistics re-estimated on 3000 training images" in out
    assert "warm-up 0.1 epochs" in out
    _check_story(r, 55.0, 200)


@pytest.mark.slow
def test_demo_story_as_make_demo_runs_it(tmp_path):
    """`make demo` as is. Measured 2026-12-06 (Intel Xeon): FP 75.46, QAT 77.26; README (AMD EPYC,
    2026-12-02, before the regression): 74.19 -> 79.43. Floor 70: the regression gave 50.22."""
    _check_story(run_demo(out=str(tmp_path), progress=False), 70.0, 1000)
