from hawq.cli import run_main
from hawq.ptq.cli import main

run_main(main)
