"""Bit-config CLI: list schemes, or tabulate model size (MiB) and GBOPS per scheme.

    python bit_config.py --list          (or: hawq-bit-config --list)
    python bit_config.py --table [-a ARCH [--quant-scheme NAME_OR_JSON]]

Logic lives in :mod:`hawq.bit_config`; bad input prints one ``error: ...`` line, exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from hawq.bit_config import list_schemes, table_csv, table_rows
from hawq.apps.cli import add_arch_arg, add_quant_scheme_arg, console_script, one_line_errors, run_main
from hawq.errors import HawqError
from hawq.models.archs import ARCHS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise HawqError(message)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--table", action="store_true", help="CSV: arch,scheme,size_mb,gbops,paper_size_mb,paper_gbops")
    mode.add_argument("--list", action="store_true", help="archs and their scheme names")
    add_arch_arg(parser, None, help=f"one of: {', '.join(ARCHS)} (default: all)")
    add_quant_scheme_arg(parser, help="scheme name, HAWQ alias, or path to a JSON file (needs -a)")
    return parser.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        for arch in [args.arch] if args.arch else ARCHS:
            print(f"{arch}: {' '.join(list_schemes(arch))}")
    else:
        sys.stdout.write(table_csv(table_rows(args.arch, args.quant_scheme)))
    return 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
