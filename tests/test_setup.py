"""The set-up promises: one list of pins, mirrored by environment.yml; the README's commands."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pinned_pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_every_dependency_is_pinned_and_torch_is_the_cpu_build_on_disk():
    deps = pinned_pyproject()
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", d) for d in deps), deps
    assert "torch==2.13.0" in deps
    mujoco = next(d for d in deps if d.startswith("mujoco=="))
    assert int(mujoco.split("==")[1].split(".")[0]) < 4, "dm_control 1.0.50 cannot load tasks with mujoco 4"


def test_environment_yml_installs_the_same_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(pinned_pyproject())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python.split("=")[1] in requires


def test_readme_names_the_two_commands_and_ci_calls_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make figures" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^figures:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
