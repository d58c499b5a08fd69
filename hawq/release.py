"""``python -m hawq.release``: kept as an entry point; the program is :mod:`hawq.apps.release`."""
from hawq.apps.release import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
