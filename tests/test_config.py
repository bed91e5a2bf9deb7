"""Profiles resolve to one config per run; bad keys and values are rejected before any work."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import algos.config as config_module
from algos.config import ALGOS, ConfigError, check_run_config, config_hash, load_profile, resolve_run_config

ROOT = Path(__file__).resolve().parent.parent


def test_paper_profile_holds_table2_and_the_section4_grid():
    # MUSBO paper, Table 2 and section 4.
    expected = {"ant": (2000, 250, 0.05, 5), "halfcheetah": (2000, 250, 0.1, 5), "hopper": (6000, 1000, 0.05, 10),
                "walker2d": (2000, 1000, 0.05, 10), "cheetah-run": (2000, 250, 0.05, 5)}
    for env, (iters, length, delta, deployments) in expected.items():
        cfg = resolve_run_config("paper", "musbo", env, "500k", 0)
        assert (cfg["trpo"]["iterations"], cfg["trpo"]["rollout_length"], cfg["trpo"]["delta"]) == (iters, length, delta)
        assert cfg["deployments"] == deployments
        assert cfg["batch_size"] * deployments == 500_000
        assert resolve_run_config("paper", "musbo", env, "250k", 0)["batch_size"] * deployments == 250_000
    assert resolve_run_config("paper", "musbo", "ant", "500k", 0)["trpo"]["gae_lambda"] == 0.97
    assert resolve_run_config("paper", "musbo", "hopper", "500k", 0)["trpo"]["gae_lambda"] == 0.95


def test_bremen_runs_cheetah_run_with_its_readmes_target_kl_and_musbo_keeps_table_2():
    """BREMEN's README.md:66 runs cheetah_run with --target_kl 0.1 (run.envs.cheetah-run.per_algo);
    MUSBO and MOPO keep Table 2's 0.05, and every other env is the same for all three."""
    for profile in ("paper", "mini", "smoke"):
        delta = {a: resolve_run_config(profile, a, "cheetah-run", "500k", 0)["trpo"]["delta"] for a in ALGOS}
        assert delta == {"musbo": 0.05, "bremen": 0.1, "mopo": 0.05}, profile
    for env in ("walker2d", "hopper", "halfcheetah", "ant"):
        configs = [resolve_run_config("paper", a, env, "500k", 0) for a in ALGOS]
        assert all({k: v for k, v in c.items() if k != "algo"} == {k: v for k, v in configs[0].items() if k != "algo"}
                   for c in configs), env
    musbo, bremen = (resolve_run_config("paper", a, "cheetah-run", "500k", 0) for a in ("musbo", "bremen"))
    assert bremen["trpo"] == {**musbo["trpo"], "delta": 0.1}                    # only delta differs
    # --set still wins over per_algo
    assert resolve_run_config("paper", "bremen", "cheetah-run", "500k", 0, ["trpo.delta=0.2"])["trpo"]["delta"] == 0.2


@pytest.mark.parametrize("per_algo, message", [
    ({"sac": {"trpo": {"delta": 0.1}}}, "run.envs.cheetah-run.per_algo of the workflow config (profile smoke) must map "
                                        "algorithms (musbo, bremen, mopo)"),
    ({"bremen": 0.1}, "must map algorithms"),
    ({"bremen": {"trpo": {"detla": 0.1}}}, "in run.envs.cheetah-run.per_algo.bremen of the workflow config (profile "
                                           "smoke): unknown config key 'trpo.detla'; did you mean 'trpo.delta'"),
])
def test_a_bad_per_algo_section_is_named_on_any_run_of_its_env(per_algo, message):
    merged = load_profile("smoke")
    merged["run"]["envs"]["cheetah-run"]["per_algo"] = per_algo
    with pytest.raises(ConfigError) as err:
        resolve_run_config("smoke", "musbo", "cheetah-run", "500k", 0, workflow_config=merged)
    assert message in str(err.value)
    resolve_run_config("smoke", "musbo", "hopper", "500k", 0, workflow_config=merged)  # other envs unaffected


def test_mini_and_smoke_override_only_sizes():
    paper, mini = load_profile("paper"), load_profile("mini")
    assert mini["algos"] == paper["algos"] and mini["envs"] == paper["envs"]
    cfg = resolve_run_config("mini", "musbo", "hopper", "500k", 1)
    assert cfg["musbo"] == resolve_run_config("paper", "musbo", "hopper", "500k", 1)["musbo"]
    assert cfg["profile"] == "mini" and cfg["seed"] == 1


def test_set_overrides_a_key_with_type_coercion():
    cfg = resolve_run_config("smoke", "musbo", "hopper", "500k", 0, ["trpo.delta=1", "musbo.exploration_noise=none"])
    assert cfg["trpo"]["delta"] == 1.0 and isinstance(cfg["trpo"]["delta"], float)
    assert resolve_run_config("smoke", "musbo", "hopper", "500k", 0, ["trpo.delta=1e-3"])["trpo"]["delta"] == 1e-3
    assert cfg["musbo"]["exploration_noise"] == "none"


@pytest.mark.parametrize("override, message", [
    ("trpo.detla=0.1", "did you mean 'trpo.delta'"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("trpo.iterations=abc", "trpo.iterations must be int"),
    ("trpo.iterations=0", "must be positive"),
    ("dynamics.batch_size=-5", "must not be negative"),
    ("musbo.exploration_noise=loud", "choose one of eq22, one_minus_u, none"),
    ("trpo.clip_predictions=true", "choose one of abs_1e5, data_range, none"),   # the old boolean form
    ("model_eval_box=obs_range", "choose one of abs_1e5, data_range, none"),
    ("musbo.uncertainty_weighting=1", "must be bool"),
    ("dynamics.holdout=1.5", "must lie in (0, 1]"),
    ("trpo.delta", "must look like key=value"),
    ("device=tpu", "device='tpu' is not valid"),
    ("trpo.delta=nan", "trpo.delta=nan must be a finite number"),
    ("trpo.delta=.inf", "trpo.delta=inf must be a finite number"),
    ("trpo.delta=1e400", "trpo.delta=inf must be a finite number"),            # YAML reads 1e400 as inf
    ("mopo.target_entropy=-.inf", "must be a finite number"),
    ("trpo.delta={a: 1}", "trpo.delta must be float (like 0.05), got the mapping {'a': 1}"),
    ("dynamics.hidden=[32, {a: 1}]", "dynamics.hidden[1] must be int"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        resolve_run_config("smoke", "musbo", "hopper", "500k", 0, [override])
    assert message in str(err.value)


@pytest.mark.parametrize("args, message", [
    (("smoke", "sac", "hopper", "500k", 0), "unknown algo 'sac'"),
    (("smoke", "musbo", "humanoid", "500k", 0), "unknown env 'humanoid'"),
    (("smoke", "musbo", "hopper", "1m", 0), "unknown budget '1m'"),
    (("tiny", "musbo", "hopper", "500k", 0), "unknown profile 'tiny'"),
    (("smoke", "musbo", "hopper", "500k", -1), "seed must be a non-negative integer"),
])
def test_bad_run_arguments_are_named(args, message):
    with pytest.raises(ConfigError) as err:
        resolve_run_config(*args)
    assert message in str(err.value)


def test_every_leaf_of_a_profile_is_typed_and_known(tmp_path, monkeypatch):
    """A profile file (here a user's own, config/mine.yaml) is checked against paper.yaml's keys."""
    for name in ("paper.yaml", "smoke.yaml"):
        (tmp_path / name).write_text((config_module.CONFIG_DIR / name).read_text())
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    (tmp_path / "mine.yaml").write_text("run:\n  defaults:\n    deployments: 3\n")
    assert resolve_run_config("mine", "musbo", "halfcheetah", "500k", 0)["deployments"] == 3
    assert load_profile("mine")["profile"] == "mine"
    (tmp_path / "mine.yaml").write_text("run:\n  defaults:\n    trpo: {detla: 0.1}\n")
    with pytest.raises(ConfigError, match="in run.defaults of profile mine: unknown config key 'trpo.detla'"):
        resolve_run_config("mine", "musbo", "halfcheetah", "500k", 0)
    (tmp_path / "mine.yaml").write_text("run:\n  defaults:\n    trpo: {delta: {a: 1}}\n")
    with pytest.raises(ConfigError, match="trpo.delta must be float"):
        resolve_run_config("mine", "musbo", "halfcheetah", "500k", 0)
    (tmp_path / "mine.yaml").write_text("profile: other\n")
    with pytest.raises(ConfigError, match="profile key must be its file name"):
        load_profile("mine")
    with pytest.raises(ConfigError, match=f"unknown profile 'nope': {tmp_path / 'nope.yaml'} does not exist"):
        load_profile("nope")


def test_a_workflow_config_replaces_the_profile_files():
    merged = load_profile("smoke")
    merged["run"]["defaults"]["trpo"]["cg_iters"] = 7                        # a --configfile / --config edit
    cfg = resolve_run_config("smoke", "bremen", "hopper", "500k", 0, workflow_config=merged)
    assert cfg["trpo"]["cg_iters"] == 7
    assert cfg["trpo"]["iterations"] == 2 and cfg["profile"] == "smoke"     # the rest as smoke.yaml
    assert config_hash(cfg) != config_hash(resolve_run_config("smoke", "bremen", "hopper", "500k", 0))
    typo = copy.deepcopy(merged)
    typo["run"]["defaults"]["dynamics"]["lrr"] = 0.1
    with pytest.raises(ConfigError, match="in run.defaults of the workflow config .*'dynamics.lrr'; did you mean 'dynamics.lr'"):
        resolve_run_config("smoke", "bremen", "hopper", "500k", 0, workflow_config=typo)
    with pytest.raises(ConfigError, match="the workflow config is profile 'smoke', not 'mini'"):
        resolve_run_config("mini", "bremen", "hopper", "500k", 0, workflow_config=merged)


def test_config_hash_is_the_sha256_of_the_canonical_json():
    import hashlib
    import json
    cfg = resolve_run_config("smoke", "bremen", "hopper", "500k", 0)
    assert config_hash(cfg) == hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config_hash(dict(reversed(list(cfg.items())))) == config_hash(cfg)   # key order does not matter
    assert config_hash({**cfg, "seed": 1}) != config_hash(cfg)


def test_a_run_config_read_back_is_validated_completely():
    cfg = resolve_run_config("smoke", "bremen", "hopper", "500k", 0, ["trpo.delta=0.2"])
    assert check_run_config(yaml.safe_load(yaml.safe_dump(cfg))) == cfg
    for edit, message in [
        (lambda c: c["trpo"].update(delta=float("nan")), "trpo.delta=nan must be a finite number"),
        (lambda c: c["trpo"].pop("delta"), "missing config key(s) trpo.delta"),
        (lambda c: c.update(batch_size=7), "batch_size=7 but budget_samples.500k / deployments gives"),
        (lambda c: c.pop("seed"), "missing run key(s) seed"),
        (lambda c: c.update(extra=1), "unknown config key 'extra'"),
    ]:
        bad = copy.deepcopy(cfg)
        edit(bad)
        with pytest.raises(ConfigError) as err:
            check_run_config(bad)
        assert message in str(err.value)


def test_write_run_config_cli_takes_several_sets_after_one_flag(tmp_path):
    out = tmp_path / "run.yaml"
    proc = subprocess.run([sys.executable, "-m", "algos.config", "write-run-config", "--out", str(out), "--profile",
                           "smoke", "--algo", "bremen", "--env", "hopper", "--budget", "500k", "--seed", "2",
                           "--set", "trpo.delta=0.2", "bc.lr=1e-3", "--set", "gamma=0.9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(out.read_text())
    assert cfg == resolve_run_config("smoke", "bremen", "hopper", "500k", 2,
                                     ["trpo.delta=0.2", "bc.lr=1e-3", "gamma=0.9"])


# ---------------------------------------------------------------- the one YAML loader (issue 21)
# 9**9 strings once expanded; 3 kB of YAML
ALIAS_BOMB = "[&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")) + "]"


def run_cli_refusal(capsys, run_config: Path, out: Path) -> str:
    """`python -m algos.run --run-config FILE --out DIR` in-process: exit 2, one line, nothing written."""
    from algos.run import main as run_main
    assert run_main(["--run-config", str(run_config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400, err
    assert not out.exists()
    return err


def smoke_run_config_text() -> str:
    return yaml.safe_dump(resolve_run_config("smoke", "bremen", "hopper", "500k", 0), sort_keys=False)


def test_duplicate_key_in_run_config_is_refused(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(smoke_run_config_text() + "seed: 7\n")      # `seed: 0` above, then `seed: 7`
    err = run_cli_refusal(capsys, path, tmp_path / "seed7")
    line = len(smoke_run_config_text().splitlines()) + 1
    assert f"{path} is not valid YAML at line {line}: key 'seed' is given twice" in err


def test_duplicate_key_in_a_profile_is_refused_naming_file_and_key(tmp_path, monkeypatch):
    (tmp_path / "paper.yaml").write_text((config_module.CONFIG_DIR / "paper.yaml").read_text())
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    (tmp_path / "mine.yaml").write_text("run:\n  defaults:\n    deployments: 3\n    deployments: 4\n")
    with pytest.raises(ConfigError, match=r"mine.yaml is not valid YAML at line 4: key 'run.defaults.deployments' is "
                                          r"given twice \(also at line 3\); keep one"):
        load_profile("mine")


def test_alias_bomb_is_refused_quickly_in_one_line(tmp_path, capsys):
    import time
    path = tmp_path / "run.yaml"
    text = smoke_run_config_text()
    path.write_text(text.replace("\nseed: 0\n", f"\nseed: {ALIAS_BOMB}\n"))
    start = time.monotonic()
    err = run_cli_refusal(capsys, path, tmp_path / "out")
    line = text.splitlines().index("seed: 0") + 1
    assert f"{path} is not valid YAML at line {line}: key 'seed' holds an anchor or alias (& or *)" in err
    with pytest.raises(ConfigError) as refused:                   # the --set form of it
        resolve_run_config("smoke", "bremen", "hopper", "500k", 0, ["dynamics.hidden=" + ALIAS_BOMB])
    assert time.monotonic() - start < 5
    assert "--set dynamics.hidden is not valid YAML at line 1: the document holds an anchor" in str(refused.value)
    assert len(str(refused.value)) < 400


def test_binary_run_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_bytes(bytes(range(256)) * 8)
    assert f"{path} is not UTF-8 text (byte 0x80 at offset 128)" in run_cli_refusal(capsys, path, tmp_path / "out")
    path.write_bytes(b"seed: \x00\x01\n")                         # UTF-8, but control characters
    assert "unacceptable character" in run_cli_refusal(capsys, path, tmp_path / "out")


def test_oversized_config_file_is_refused_before_reading_it_all(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("# padding\n" * (config_module.MAX_CONFIG_BYTES // 10 + 1))
    err = run_cli_refusal(capsys, path, tmp_path / "out")
    assert f"{path} is larger than {config_module.MAX_CONFIG_BYTES} bytes" in err


def test_float_in_a_set_list_is_read_as_float():
    cfg = resolve_run_config("smoke", "mopo", "hopper", "500k", 0, ["mopo.weight_decay=[1e-5,2e-5,3e-5]"])
    assert cfg["mopo"]["weight_decay"] == [1e-5, 2e-5, 3e-5]


def test_float_without_a_dot_in_a_profile_and_a_run_config_is_read_as_float(tmp_path, monkeypatch):
    (tmp_path / "paper.yaml").write_text((config_module.CONFIG_DIR / "paper.yaml").read_text())
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    (tmp_path / "mine.yaml").write_text("run:\n  defaults:\n    dynamics: {weight_decay: 1e-5, lr: 2E-4}\n")
    cfg = resolve_run_config("mine", "musbo", "hopper", "500k", 0)
    assert (cfg["dynamics"]["weight_decay"], cfg["dynamics"]["lr"]) == (1e-5, 2e-4)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg).replace("1.0e-05", "1e-5"))
    assert "1e-5" in path.read_text() and config_module.read_run_config(path) == cfg


def test_reading_runs_name_their_algorithms_and_envs_and_variant_of_reads_the_folder_back():
    paper = load_profile("paper")
    env = paper["ablation_env"]
    runs = config_module.reading_runs(paper)
    assert ("eq12_std_sum", "musbo", env, "eq12_std_sum") in runs               # a list: MUSBO on ablation_env
    assert [r for r in runs if r[0] == "batch_full"] == [                       # a mapping: its algos x envs
        ("batch_full", "musbo", "hopper", "batch_full"), ("batch_full", "musbo", "walker2d", "batch_full"),
        ("batch_full", "bremen", "hopper", "batch_full/bremen"), ("batch_full", "bremen", "walker2d", "batch_full/bremen")]
    assert len(runs) == len(paper["readings"]) - 1 + 4
    assert config_module.variant_of(paper, "readings", "batch_full/bremen") == ("bremen", ["trpo.batch_assembly=full"])
    assert config_module.variant_of(paper, "readings", "batch_full") == ("musbo", ["trpo.batch_assembly=full"])
    assert config_module.variant_of(paper, "readings", "eq9_raw") == ("musbo", ["musbo.eq9_distance=raw"])
    assert config_module.variant_of(paper, "ablations", "no_exploration_noise") == (
        "musbo", ["musbo.exploration_noise=none"])
    assert config_module.variant_of(paper, "runs", "mopo") == ("mopo", [])
    with pytest.raises(ConfigError, match="readings/nope/bremen is no run of the config: 'nope' has no entry in "
                                          "reading_switches"):
        config_module.variant_of(paper, "readings", "nope/bremen")
    smoke = load_profile("smoke")                                               # a profile narrows a mapping's envs
    assert [r[1:] for r in config_module.reading_runs(smoke) if r[0] == "batch_full"] == [
        ("musbo", "hopper", "batch_full"), ("bremen", "hopper", "batch_full/bremen")]
