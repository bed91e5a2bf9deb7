"""algos/rundir.py, the run directory's promises, on hand-made directories: identity first and
refusal before any write, the lock, atomic writes that clean up after a full disk, checkpoints
verified by sha256, and the resume host check."""
import errno
import json
import os

import pytest
import torch
import yaml

from algos.config import config_hash, resolve_run_config
from algos import rundir
from algos.rundir import RunDir, RunError


@pytest.fixture(scope="module")
def cfg():
    return resolve_run_config("smoke", "bremen", "halfcheetah", "250k", 3)


def files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_identity_is_written_atomically_with_the_config_hash(tmp_path, cfg):
    d = RunDir(tmp_path / "run", cfg)
    d.close()
    assert json.loads((tmp_path / "run" / "identity.json").read_text()) == {
        "algo": "bremen", "env": "halfcheetah", "budget": "250k", "seed": 3, "profile": "smoke",
        "config_hash": config_hash(cfg)}
    assert sorted(os.listdir(tmp_path / "run")) == ["identity.json", "run.lock"]  # no temp file left


def test_another_identity_is_refused_before_anything_is_written(tmp_path, cfg):
    RunDir(tmp_path, cfg).close()
    (tmp_path / "metrics.csv").write_text("deployment\n1\n")
    before = files(tmp_path)
    other = {**cfg, "seed": 4}
    with pytest.raises(RunError, match="seed: 3 there, 4 here.*refused before writing anything"):
        RunDir(tmp_path, other)
    changed = {**cfg, "trpo": {**cfg["trpo"], "delta": 0.2}}
    with pytest.raises(RunError, match="config hash .* there"):
        RunDir(tmp_path, changed)
    assert files(tmp_path) == before


def test_a_directory_from_before_identities_is_judged_by_its_config_yaml(tmp_path, cfg):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "metrics.csv").write_text("deployment\n1\n")
    with pytest.raises(RunError, match="seed: 3 there, 4 here"):
        RunDir(tmp_path, {**cfg, "seed": 4})
    assert not (tmp_path / "identity.json").exists()
    RunDir(tmp_path, cfg).close()                            # the same run: adopted, identity written
    assert json.loads((tmp_path / "identity.json").read_text())["config_hash"] == config_hash(cfg)


def test_a_non_empty_directory_of_no_run_is_refused(tmp_path, cfg):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="holds no run"):
        RunDir(tmp_path, cfg)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_replace_stale_moves_everything_aside_and_stale_dirs_are_ignored(tmp_path, cfg):
    out = tmp_path / "seed3"                                  # a run directory: named seed<N>
    RunDir(out, cfg).close()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "x").write_text("old")
    old_hash = config_hash(cfg)[:12]
    new = {**cfg, "trpo": {**cfg["trpo"], "delta": 0.2}}
    RunDir(out, new, replace_stale=True).close()
    stale = out / f"stale-{old_hash}"
    assert (stale / "checkpoints" / "x").read_text() == "old"
    assert json.loads((stale / "identity.json").read_text())["config_hash"] == config_hash(cfg)
    assert sorted(os.listdir(out)) == ["identity.json", "run.lock", f"stale-{old_hash}"]
    RunDir(out, new).close()                                 # stale-*/ does not count as another run
    RunDir(out, cfg, replace_stale=True).close()             # back again: a second stale dir, nothing lost
    assert (out / f"stale-{config_hash(new)[:12]}" / "identity.json").is_file() and stale.is_dir()


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path, cfg):
    held = RunDir(tmp_path, cfg)
    assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(RunError, match=f"in use by another run \\(pid {os.getpid()}"):
        RunDir(tmp_path, cfg)
    held.close()
    RunDir(tmp_path, cfg).close()                            # released: the next run may start


def test_a_locked_run_directory_is_waited_for_then_taken(tmp_path, cfg, capsys):
    import threading
    held = RunDir(tmp_path, cfg)
    threading.Timer(1.0, held.close).start()                 # the other run finishes a second later
    RunDir(tmp_path, cfg, lock_wait=60).close()
    assert capsys.readouterr().err == (f"{tmp_path} is in use by another run (pid {os.getpid()}); "
                                       f"waiting up to 60s for its lock\n")   # one line, then it runs


def test_the_lock_wait_is_bounded_and_names_the_holder(tmp_path, cfg):
    import time
    held = RunDir(tmp_path, cfg)
    start = time.monotonic()
    with pytest.raises(RunError, match=f"in use by another run \\(pid {os.getpid()}, .* after waiting 0.5s"):
        RunDir(tmp_path, cfg, lock_wait=0.5)
    assert 0.5 <= time.monotonic() - start < 5
    held.close()


def test_replace_stale_refuses_a_directory_that_is_not_a_run(tmp_path, cfg):
    results = tmp_path / "RES"                               # a results tree: runs/ and a user's notes
    RunDir(results / "runs" / "seed3", cfg).close()
    (results / "notes.txt").write_text("mine")
    not_a_run = tmp_path / "seed3"                           # named like a run, holding none
    (not_a_run / "sub").mkdir(parents=True)
    (not_a_run / "notes.txt").write_text("mine")
    misnamed = tmp_path / "myrun"                            # a run of another config, not named seed<N>
    RunDir(misnamed, {**cfg, "trpo": {**cfg["trpo"], "delta": 0.2}}).close()
    for out in (results, not_a_run, misnamed):
        before = files(out)
        with pytest.raises(RunError, match="--replace-stale moves aside only a run directory .*refused before writing"):
            RunDir(out, cfg, replace_stale=True)
        assert files(out) == before and not list(out.glob("stale-*")), out


def test_stale_tmp_files_of_this_run_are_removed_at_start(tmp_path, cfg):
    out = tmp_path / "seed3"
    RunDir(out, cfg).close()
    own = [".metrics.csv.123.tmp", ".config.yaml.9.tmp", ".scalars.csv.77.tmp", "checkpoints/.deployment_2.pt.456.tmp",
           "checkpoints/.deployment_2.pt.sha256.456.tmp", "batches/.deployment_1.npz.9.tmp"]
    others = [".notes.txt.123.tmp", "notes.tmp", ".metrics.csv.tmp", "checkpoints/.mine.1.tmp",
              "stale-0123456789ab/.metrics.csv.5.tmp", "tensorboard/.deployment_1.npz.9.tmp"]
    for name in own + others:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x" * 1000)                # a killed write's remains
    with pytest.raises(RunError, match="seed: 3 there, 4 here"):
        RunDir(out, {**cfg, "seed": 4})                      # a refused run removes nothing either
    assert all((out / name).exists() for name in own)
    RunDir(out, cfg).close()
    assert [name for name in own if (out / name).exists()] == []
    assert all((out / name).exists() for name in others)


def test_temp_files_are_unique_per_process(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(rundir.os, "replace", lambda src, dst: (seen.append(str(src)), real_replace(src, dst)))
    rundir.atomic_write_bytes(tmp_path / "a.csv", b"x")
    assert seen == [str(tmp_path / f".a.csv.{os.getpid()}.tmp")]


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(rundir.os, "fsync", full)
    with pytest.raises(RunError) as err:
        rundir.atomic_write_bytes(tmp_path / "metrics.csv", b"deployment\n")
    assert str(err.value) == (f"cannot write {tmp_path / 'metrics.csv'}: No space left on device; "
                              f"free some space or choose another --out")
    assert os.listdir(tmp_path) == []


def test_checkpoints_are_verified_by_sha256(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    rundir.save_checkpoint(tmp_path, 1, {"deployment": 1, "w": torch.arange(4.0)})
    path = tmp_path / "checkpoints" / "deployment_1.pt"
    assert rundir.read_checkpoint(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01                                        # one flipped bit
    path.write_bytes(bytes(data))
    assert rundir.read_checkpoint(path) is None
    assert f"checkpoint {path} does not match its sha256" in capsys.readouterr().err
    path.with_name("deployment_1.pt.sha256").unlink()
    assert rundir.read_checkpoint(path) is None              # no recorded checksum: never loaded


def test_only_the_two_newest_checkpoints_are_kept(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for i in (1, 2, 3):
        rundir.save_checkpoint(tmp_path, i, {"deployment": i})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "deployment_2.pt", "deployment_2.pt.sha256", "deployment_3.pt", "deployment_3.pt.sha256"]


def test_a_resume_on_another_device_or_thread_count_is_refused_unless_allowed(capsys):
    then = {"device": "cpu", "threads": 1}
    assert rundir.check_same_host(then, {"device": "cpu", "threads": 1}, False) is False
    assert rundir.check_same_host(None, {"device": "cuda:0", "threads": 8}, False) is False
    with pytest.raises(RunError, match="threads 1 then, 4 now.*--allow-different-host"):
        rundir.check_same_host(then, {"device": "cpu", "threads": 4}, False)
    with pytest.raises(RunError, match="device 'cpu' then, 'cuda:0' now"):
        rundir.check_same_host(then, {"device": "cuda:0", "threads": 1}, False)
    assert rundir.check_same_host(then, {"device": "cpu", "threads": 4}, True) is True


def test_out_must_not_be_empty():
    for text in ("", " "):
        with pytest.raises(RunError, match="--out is empty"):
            rundir.check_out_arg(text)


def test_a_run_killed_while_writing_its_identity_can_start_again(tmp_path, cfg):
    (tmp_path / f".identity.json.{os.getpid() + 1}.tmp").write_text("{")   # kill -9 inside the atomic write
    RunDir(tmp_path, cfg).close()
    assert json.loads((tmp_path / "identity.json").read_text())["seed"] == 3
