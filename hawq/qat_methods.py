"""``python -m hawq.qat_methods``: kept as an entry point; the program is :mod:`hawq.benchmarks.qat_methods`."""
from hawq.benchmarks.qat_methods import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
