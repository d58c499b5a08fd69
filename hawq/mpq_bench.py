"""``python -m hawq.mpq_bench``: kept as an entry point; the program is :mod:`hawq.benchmarks.mpq`."""
from hawq.benchmarks.mpq import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
