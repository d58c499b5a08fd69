"""``python bit_config.py --list | --table [-a ARCH [--quant-scheme S]]`` (HAWQ-V3's entry point): the
program is :mod:`hawq.apps.bit_config` (also ``hawq-bit-config``)."""
from hawq.apps.bit_config import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
