"""``python -m hawq.demo``: kept as an entry point; the program is :mod:`hawq.apps.demo`."""
from hawq.apps.demo import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
