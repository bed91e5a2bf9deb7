"""The one timing helper of the bench modules."""
import time


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """Best of `repeats` calls of fn(): on 2 shared cores the best run is the least disturbed
    one. clock=time.process_time gives this process's CPU seconds (all threads), which a
    loaded machine distorts less than wall time."""
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best
