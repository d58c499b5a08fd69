"""``python -m hawq.capture_report``: kept as an entry point; the program is :mod:`hawq.apps.capture_report`."""
from hawq.apps.capture_report import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
