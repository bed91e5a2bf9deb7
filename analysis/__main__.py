"""python -m analysis TARGET --profile PROFILE [--config MERGED.yaml] [--results results/PROFILE] [--out DIR]"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from algos.config import ConfigError, read_config_file
from algos.rundir import RunError, write_error
from analysis.results import NoResultsError
from analysis.targets import TARGETS, figures_dir, run


def check_out(out: Path) -> None:
    """--out must be a directory that can be made and written (checked before any work)."""
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a directory; give a directory for the figures")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable (read-only); give a directory you can write")


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
    out = args.out if args.out is not None else figures_dir(args.profile)
    try:
        cfg = None
        if args.config is not None:
            try:
                cfg = read_config_file(args.config)
            except OSError as err:
                raise ConfigError(f"--config {args.config} cannot be read ({err.strerror}); give the merged config the "
                                  "workflow writes (results/PROFILE/workflow_config.yaml) or leave it out") from None
            if not isinstance(cfg, dict) or cfg.get("profile") != args.profile:
                raise ConfigError(f"--config {args.config} is not a config of profile {args.profile!r} "
                                  "(its profile key differs)")
        check_out(out)
        paths = run(args.target, args.profile, args.results, out, cfg)
    except (NoResultsError, RunError, ConfigError) as err:  # a bad argument; no usable runs; a failed write
        print(f"python -m analysis {args.target}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a folder of --out that cannot be made
        print(f"python -m analysis {args.target}: {write_error(Path(err.filename or out), err)}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
