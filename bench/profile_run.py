"""Where a run's time goes: one `python -m algos.run` under py-spy (a sampling profiler: no
instrumentation, so small calls are not inflated), summarised by the functions of this repo.

    python bench/profile_run.py --algo mopo --env halfcheetah [--profile mini] [--rate 50]

Writes bench/profiles/<profile>_<algo>_<env>.txt: the share of samples inside each of our
functions (inclusive, a function counts once per sample) and the leaf frames that burn the most
samples (self time, which names the torch/numpy/MuJoCo call at the bottom). py-spy needs
permission to trace a child process (root, or kernel.yama.ptrace_scope = 0).
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def frame_name(frame: str) -> str:
    """'fn (/abs/path/site-packages/pkg/mod.py:12)' -> 'fn (pkg/mod.py)'; ours relative to the repo
    (lines dropped: a function's share is the sum over its lines)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for anchor in ("site-packages/", f"{ROOT}/"):
        if anchor in where:
            where = where.split(anchor, 1)[1]
    return f"{name} ({where})"


def summarise(raw: Path, top: int = 40) -> str:
    inclusive, leaf, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [frame_name(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        leaf[frames[-1]] += n
    ours = [(f, c) for f, c in inclusive.most_common() if any(f"({p}/" in f for p in ("algos", "envs"))]
    lines = [f"samples: {total}", "", "inclusive share, functions of this repo:"]
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in ours[:top]]
    lines += ["", "self share, leaf frames:"]
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in leaf.most_common(20)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--budget", default="500k")
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        cmd = [py_spy, "record", "--rate", str(args.rate), "--format", "raw", "--output", str(raw), "--",
               sys.executable, "-m", "algos.run", "--algo", args.algo, "--env", args.env, "--budget", args.budget,
               "--seed", "0", "--profile", args.profile, "--out", str(Path(tmp) / "run")]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 or not raw.is_file():
            sys.exit(f"py-spy failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        header = f"py-spy profile: {args.algo} {args.env} {args.budget} seed 0, profile {args.profile}, {args.rate} Hz\n"
        text = header + summarise(raw)
    out = ROOT / "bench" / "profiles" / f"{args.profile}_{args.algo}_{args.env}.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
