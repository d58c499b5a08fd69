"""``python -m hawq.api_bench``: kept as an entry point; the program is :mod:`hawq.benchmarks.api`."""
from hawq.benchmarks.api import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
