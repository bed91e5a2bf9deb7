"""The set-up promises: one list of pins for what jobs import, mirrored by environment.yml (the
jobs' conda env, without developer tools), developer tools in the `dev` extra; the README's commands."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEV_TOOLS = ("snakemake", "snakemake-executor-plugin-slurm", "pytest", "pytest-timeout", "py-spy")
PEERS = ("stable-baselines3", "sb3-contrib")  # the calibrate extra: bench/calibrate.py's trusted implementations


def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(pins):
    return {re.split(r"[=<>\[]", pin)[0].lower() for pin in pins}


def test_every_dependency_is_pinned_and_torch_is_the_cpu_build_on_disk():
    extras = project()["optional-dependencies"]
    own = {d for d in extras["dev"] if d.startswith(project()["name"] + "[")}
    # the tests cover --track tensorboard and the calibration harness
    assert own == {"musbo-repro[track]", "musbo-repro[calibrate]"} and extras["track"] and extras["calibrate"]
    deps = project()["dependencies"] + [d for group in extras.values() for d in group if d not in own]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", d) for d in deps), deps
    assert "torch==2.13.0" in deps
    mujoco = next(d for d in deps if d.startswith("mujoco=="))
    assert int(mujoco.split("==")[1].split(".")[0]) < 4, "dm_control 1.0.50 cannot load tasks with mujoco 4"


def test_developer_tools_are_an_extra_not_a_runtime_dependency():
    assert not names(project()["dependencies"]) & set(DEV_TOOLS)
    assert set(DEV_TOOLS) <= names(project()["optional-dependencies"]["dev"])
    assert "'.[dev]'" in (ROOT / "Makefile").read_text()  # make setup installs them


def test_the_calibration_peers_are_an_extra_that_make_calibrate_installs():
    assert names(project()["optional-dependencies"]["calibrate"]) == set(PEERS)
    assert not names(project()["dependencies"]) & set(PEERS)
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^calibrate:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "'.[calibrate]'" in target.group(1) and "bench/calibrate.py" in target.group(1)


def test_environment_yml_installs_the_runtime_pins_and_nothing_else():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(project()["dependencies"])
    assert not names(pip_section) & set(DEV_TOOLS + PEERS)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python.split("=")[1] in project()["requires-python"]


def test_readme_names_the_commands_and_ci_calls_make_test():
    readme = (ROOT / "README.md").read_text()
    for command in ("make figures", "make test", "snakemake --cores 8 all", "snakemake --cores 8 --use-conda all",
                    "snakemake paper_figures/fig2.pdf", "--conda-create-envs-only", "--workflow-profile profiles/slurm",
                    "--report report.html", "paper_figures/mini/"):
        assert command in readme, command
    assert "profiles/local" not in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^figures:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
