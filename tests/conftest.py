"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests use tiny tensors: a second intra-op thread only adds synchronisation (and on a
    loaded 2-core machine, spin-waits of several ms per op). The run CLI sets its own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_env_results(tmp_path):
    """Fake mini results (analysis/synthetic.py) on HalfCheetah and Hopper, 500k, seeds 0 and 1:
    (config, results root)."""
    import copy

    from analysis.profile import load_profile
    from analysis.synthetic import write_fake_results
    cfg = copy.deepcopy(load_profile("mini"))
    cfg["seeds"], cfg["ablation_seeds"] = [0, 1], [0]
    cfg["envs"], cfg["budgets"], cfg["readings"] = ["halfcheetah", "hopper"], ["500k"], []
    root = tmp_path / "mini"
    write_fake_results(root, cfg, with_batches=False)
    return cfg, root
