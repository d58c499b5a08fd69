#!/usr/bin/env python
"""Integer-only quantization-aware training with HAWQ-V3's command line.

    python quant_train.py -a resnet50 --epochs 1 --lr 0.0001 --batch-size 128 --data /path/to/imagenet \
        --pretrained --save-path ckpt/ --act-range-momentum=0.99 --wd 1e-4 --data-percentage 0.0001 \
        --fix-BN --checkpoint-iter -1 --quant-scheme uniform8

Without --data it trains on the embedded Fashion-MNIST. See README.md for every flag.
"""
from hawq.apps.cli import run_main
from hawq.apps.train import main

if __name__ == "__main__":
    run_main(main)
