"""bench/profile_run.py's summary of a py-spy raw profile (the profiler itself runs in bench/ only)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import profile_run  # noqa: E402


def test_profile_summary_shares_are_per_function_and_count_each_sample_once(tmp_path):
    root = profile_run.ROOT
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"main ({root}/algos/run.py:10);fit ({root}/algos/core/ensemble.py:5);bmm (/x/site-packages/torch/f.py:1) 6\n"
        f"main ({root}/algos/run.py:10);fit ({root}/algos/core/ensemble.py:7);fit ({root}/algos/core/ensemble.py:9) 2\n"
        f"main ({root}/algos/run.py:12);step (/x/site-packages/mujoco/m.py:3) 2\n")
    text = profile_run.summarise(raw)
    assert "samples: 10" in text
    assert " 100.0 %  main (algos/run.py)" in text           # lines 10 and 12: one function
    assert "  80.0 %  fit (algos/core/ensemble.py)" in text   # recursion counted once per sample
    assert "  60.0 %  bmm (torch/f.py)" in text               # self time of the leaf frame
    assert "step (mujoco/m.py)" in text.split("self share")[1]
