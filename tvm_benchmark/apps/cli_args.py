"""Command-line arguments shared by the tvm_benchmark tools."""
from __future__ import annotations

import argparse

from hawq.apps.cli import (RECORDED_DATASET_HELP, add_arch_arg, add_data_args as add_dataset_args, add_input_size_arg,
                           add_quant_scheme_arg)
from tvm_benchmark.isa import CHOICES as ISA_CHOICES
from tvm_benchmark.targets import TARGETS


__all__ = ["add_program_args", "add_isa_arg", "add_data_args"]

def add_program_args(p: argparse.ArgumentParser, batch_default: int, checkpoint_required: bool = True) -> None:
    p.add_argument("--checkpoint", required=checkpoint_required,
                   help="QAT checkpoint from quant_train.py, or its integer artifact quantized_checkpoint.pth.tar, "
                        "or HAWQ-V3's checkpoint.pth.tar / quantized_checkpoint.pth.tar (with --quant-scheme)")
    add_arch_arg(p, None, help="for HAWQ-V3 files that do not record it")
    add_quant_scheme_arg(p, help="for HAWQ-V3 files, which do not record their bit_config")
    add_input_size_arg(p, "the checkpoint's (an artifact's is fixed), else 224 with --data, 32 on the embedded "
                          "dataset, 96 for inceptionv3")
    p.add_argument("--target", default="llvm",
                   help=f"{' or '.join(TARGETS)} (llvm = this host's CPU, vector extensions detected)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-b", "--batch-size", type=int, default=batch_default,
                   help="static batch size the module is compiled for")
    p.add_argument("--untuned", action="store_true",
                   help="compile TVM's unscheduled default program instead of the hand-scheduled one")
    add_isa_arg(p)


def add_isa_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--isa", choices=ISA_CHOICES, default=None,
                   help="x86 kernel family for --target llvm (default: detected from /proc/cpuinfo); "
                        "a family this CPU lacks can be exported but not run")


def add_data_args(p: argparse.ArgumentParser) -> None:
    add_dataset_args(p, data_help="dataset directory (ImageFolder root for imagenet)",
                     dataset_help=RECORDED_DATASET_HELP)
    p.add_argument("--limit", type=int, default=None, help="first N validation images (default: all)")
    p.add_argument("--no-progress", action="store_true")
