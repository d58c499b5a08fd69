"""``python -m hawq.bench``: kept as an entry point; the program is :mod:`hawq.benchmarks.qat_overhead`."""
from hawq.benchmarks.qat_overhead import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
