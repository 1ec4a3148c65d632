"""A run never loses work and never quietly returns a broken model: resume and collapse guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from unlearnlm import unlearn
from unlearnlm.errors import UnlearnError
from unlearnlm.train.checkpoint import CHECKPOINT, partial_dir

TINY = dict(method="icu", prefix_tokens=4, suffix_tokens=None, batch_size=2,
            quick_check=False)  # the check after a run has its own tests (test_audit.py)
NO_METHOD = {k: v for k, v in TINY.items() if k != "method"}


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_collapse_guard_rolls_back_to_the_last_good_epoch(leaky_llama_dir, record_files, tmp_path):
    """Gradient ascent at lr 0.5 wrecks the model in one epoch: the held-out perplexity jumps,
    the guard rolls back and halves the lr, and after its last allowed rollback it stops and
    returns the last good weights, which here are the untouched input weights."""
    out = tmp_path / "run"
    record = unlearn(
        model=str(leaky_llama_dir), forget=str(record_files["forget"]),
        calibrate_on=str(record_files["calibration"]), out=str(out), method="ga", lr=0.5,
        max_epochs=5, guard_ppl_factor=1.5, guard_max_rollbacks=1, **NO_METHOD,
    )
    events = record["guard"]["events"]
    assert [e["action"] for e in events] == ["lower lr", "stop"]
    assert events[0]["lr_after"] == pytest.approx(0.25)
    assert record["stopped"]["reason"].startswith("collapse guard")
    before, after = _weights(leaky_llama_dir), _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "run.json").read_text())["guard"]["events"] == events


def test_guard_off_lets_the_collapse_through(leaky_llama_dir, record_files, tmp_path):
    record = unlearn(
        model=str(leaky_llama_dir), forget=str(record_files["forget"]),
        calibrate_on=str(record_files["calibration"]), out=str(tmp_path / "run"), method="ga",
        lr=0.5, max_epochs=1, guard_ppl_factor=None, **NO_METHOD,
    )
    assert record["guard"]["events"] == []


def _command(model, files, out, epochs):
    return [sys.executable, "-m", "unlearnlm.cli", "-q", "unlearn", "--model", str(model),
            "--forget", str(files["forget"]), "--pool", str(files["pool"]), "--out", str(out),
            "--lr", "3e-4", "--max-epochs", str(epochs), "--bleu-threshold", "0.6",
            "--bertscore-threshold", "0.97", "--prefix-tokens", "4", "--suffix-tokens", "all",
            "--batch-size", "1", "--seed", "3", "--no-check"]


def test_killed_run_resumes_to_the_same_result(leaky_llama_dir, record_files, tmp_path):
    """SIGKILL a run once its first epoch is checkpointed, resume it, and compare with a run that
    was never interrupted: same dropped order, same weights."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(_command(leaky_llama_dir, record_files, whole, 4), check=True, env=env,
                   capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(leaky_llama_dir, record_files, killed, 4), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = partial_dir(killed) / CHECKPOINT
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()  # nothing half-written in the output directory

    resumed = unlearn(resume=str(killed))
    reference = json.loads((whole / "run.json").read_text())
    assert resumed["dropped_order"] == reference["dropped_order"]
    a, b = _weights(whole), _weights(killed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not partial_dir(killed).exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UnlearnError, match="nothing to resume"):
        unlearn(resume=str(tmp_path / "never-ran"))


def test_collapse_rules_each_fire():
    """Each guard rule on its own: a non-finite loss, a forget NLL past the limit (forget_ga is
    the negated NLL, so -(-20) = 20 > 15), and a probe perplexity past factor x start."""
    from types import SimpleNamespace

    from unlearnlm.train.unlearn import _collapse

    config = SimpleNamespace(guard_forget_nll=15.0, guard_ppl_factor=2.0)
    assert "non-finite" in _collapse({"total": float("nan")}, 10.0, 10.0, config)
    assert "runaway forget loss" in _collapse({"forget_ga": -20.0}, 10.0, 10.0, config)
    assert "perplexity 25.0" in _collapse({"forget_ga": -5.0}, 25.0, 10.0, config)
    assert _collapse({"forget_ga": -5.0}, 19.0, 10.0, config) == ""


def test_atomic_path_renames_a_complete_file_and_leaves_no_trace_on_failure(tmp_path):
    """One helper writes every file: the target changes only when the write completes."""
    from unlearnlm.rundir import atomic_path, write_json, write_text_atomic

    target = tmp_path / "sub" / "eval.json"
    write_json(target, {"name": "ü", "x": 1})
    assert json.loads(target.read_text(encoding="utf-8")) == {"name": "ü", "x": 1}
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.suffix == ".json"
        temporary.write_text("half a fi", encoding="utf-8")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text(encoding="utf-8"))["x"] == 1  # the old file stands
    write_text_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["eval.json"]
