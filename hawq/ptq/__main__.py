from hawq.apps.cli import run_main
from hawq.apps.ptq import main

run_main(main)
