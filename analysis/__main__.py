"""python -m analysis TARGET --profile PROFILE [--config MERGED.yaml] [--results results/PROFILE] [--out DIR]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from algos.rundir import RunError
from analysis.results import NoResultsError
from analysis.targets import TARGETS, figures_dir, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis",
                                     description="Figures and tables of the MUSBO reproduction, from run outputs.")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--profile", required=True, help="paper, mini, smoke or config/<yours>.yaml: the grid comes from its config")
    parser.add_argument("--config", type=Path, default=None,
                        help="the merged config as YAML (the workflow writes results/PROFILE/workflow_config.yaml); "
                             "default: config/paper.yaml merged with config/PROFILE.yaml")
    parser.add_argument("--results", type=Path, default=None, help="run outputs (default: results/PROFILE)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where figures and tables go (default: paper_figures/ for paper, else paper_figures/PROFILE/)")
    args = parser.parse_args(argv)
    cfg = None
    if args.config is not None:
        cfg = yaml.safe_load(args.config.read_text())
        if not isinstance(cfg, dict) or cfg.get("profile") != args.profile:
            parser.error(f"--config {args.config} is not a config of profile {args.profile!r} (its profile key differs)")
    out = args.out if args.out is not None else figures_dir(args.profile)
    try:
        paths = run(args.target, args.profile, args.results, out, cfg)
    except (NoResultsError, RunError) as err:  # no usable runs; a file that cannot be written
        print(f"python -m analysis {args.target}: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
