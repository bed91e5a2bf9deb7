"""Table 1 novelty: the exact O(N) form of the mean pairwise cosine similarity against the
brute-force all-pairs computation, side by side on the same data; and the nearest-neighbour
reading (exact, blocked matrix products), timed and projected to one paper-size run.

    python bench/bench_novelty.py [--quick]
"""
from __future__ import annotations

import argparse

import numpy as np

from analysis.metrics import cosine_novelty, nearest_cosine_per_deployment, unit_rows
from timing import best_time  # bench/ is on sys.path (script dir, or bench/__main__.py)


def brute_force(new_states: np.ndarray, previous_states: np.ndarray, chunk: int = 2048) -> float:
    """Every pair's cosine, summed block by block (memory bounded, time O(N * M))."""
    prev = unit_rows(previous_states)
    total = sum((unit_rows(new_states[i:i + chunk]) @ prev.T).sum() for i in range(0, len(new_states), chunk))
    return total / (len(new_states) * len(previous_states))


def run(quick: bool) -> dict:
    # Cheetah-Run at the mini size (5k new vs 20k previous) or the paper's (100k vs 400k; brute
    # force there would take minutes, so it is measured on a 10k x 40k slice and scaled by N * M).
    rng = np.random.default_rng(0)
    n_new, n_prev = (2_000, 8_000) if quick else (10_000, 40_000)
    new, prev = rng.normal(size=(n_new, 17)), rng.normal(0.3, 1.0, size=(n_prev, 17))
    fast, brute = cosine_novelty(new, prev), brute_force(new, prev)
    t_fast = best_time(lambda: cosine_novelty(new, prev), 5)
    t_brute = best_time(lambda: brute_force(new, prev), 2)
    big_new, big_prev = rng.normal(size=(100_000, 17)), rng.normal(size=(400_000, 17))
    t_fast_paper = best_time(lambda: cosine_novelty(big_new, big_prev), 3)
    # nearest neighbour: one deployment's cost is N x M products; a 5-deployment paper run (B = 100k)
    # compares 100k new states with 100k + 200k + 300k + 400k earlier ones
    t_nn = best_time(lambda: nearest_cosine_per_deployment([prev, new], device="cpu"), 2)
    paper_pairs = 100_000 * 100_000 * (1 + 2 + 3 + 4)
    return {"n_new": n_new, "n_previous": n_prev,
            "nearest_neighbour_seconds": t_nn,
            "paper_run_nearest_neighbour_seconds_projected_cpu": t_nn * paper_pairs / (n_new * n_prev), "o_n_seconds": t_fast, "bruteforce_seconds": t_brute,
            "novelty_speedup_vs_bruteforce": t_brute / t_fast, "abs_difference": abs(fast - brute),
            "paper_size_o_n_seconds": t_fast_paper,
            "paper_size_bruteforce_seconds_projected": t_brute * (100_000 * 400_000) / (n_new * n_prev)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    for key, value in run(parser.parse_args().quick).items():
        print(f"{key:45s} {value:.6g}")
