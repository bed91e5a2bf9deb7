"""python -m analysis TARGET --profile PROFILE [--results results/PROFILE] [--out paper_figures]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.results import NoResultsError
from analysis.targets import TARGETS, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis",
                                     description="Figures and tables of the MUSBO reproduction, from run outputs.")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--profile", required=True, help="paper, mini or smoke: the grid comes from its config")
    parser.add_argument("--results", type=Path, default=None, help="run outputs (default: results/PROFILE)")
    parser.add_argument("--out", type=Path, default=Path("paper_figures"), help="where figures and tables go")
    args = parser.parse_args(argv)
    try:
        paths = run(args.target, args.profile, args.results, args.out)
    except NoResultsError as err:
        print(f"python -m analysis {args.target}: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
