"""Every method in METHODS runs: one epoch on the tiny Llama changes the weights, and run.json
records the method and its loss weights. A method added to METHODS is covered automatically."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from unlearnlm import unlearn
from unlearnlm.errors import UnlearnError
from unlearnlm.methods.losses import METHODS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ma_threshold 0: EL is never scored (the costly metric) and the stop rule cannot fire;
# no collapse guard, so a one-epoch run at this learning rate is never rolled back
TINY = dict(prefix_tokens=4, suffix_tokens=None, batch_size=2, max_epochs=1, lr=1e-3,
            el_every_epoch=False, ma_threshold=0.0, guard_ppl_factor=None)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_records_itself(name, tiny_llama_dir, record_files, tmp_path):
    out = tmp_path / "run"
    record = unlearn(
        model=str(tiny_llama_dir), forget=str(record_files["forget"]),
        pool=str(record_files["pool"]), retain=str(record_files["calibration"]),
        out=str(out), method=name, **TINY,
    )
    before, after = _weights(tiny_llama_dir), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), name
    saved = json.loads((out / "run.json").read_text())
    weights = METHODS[name].weights
    assert saved["method"]["name"] == name
    assert saved["method"]["loss_weights"] == weights
    assert saved["method"]["iterative_refinement"] == METHODS[name].iterative_refinement
    assert set(record["epochs"][1]["losses"]) == {"total", *weights}


def test_dpo_with_a_refusal_needs_no_other_texts(tiny_llama_dir, record_files, tmp_path):
    """dpo_preferred: refusal prefers " I don't know." and so runs on the forget set alone; at the
    first step the policy equals the reference, so the loss starts near log 2."""
    record = unlearn(
        model=str(tiny_llama_dir), forget=str(record_files["forget"]), out=str(tmp_path / "run"),
        method="dpo", dpo_preferred="refusal", **TINY,
    )
    assert record["config"]["dpo_preferred"] == "refusal"
    assert 0.0 < record["epochs"][1]["losses"]["forget_dpo"] < 1.0


@pytest.mark.parametrize(
    "method, message", [("llmu", "give --retain"), ("dpo", "--dpo-preferred refusal")]
)
def test_missing_other_texts_is_one_clear_error(
    method, message, tiny_llama_dir, record_files, tmp_path
):
    """Without --retain or --pool, llmu has no mismatched completions and dpo (default
    dpo_preferred: other) no preferred answers."""
    with pytest.raises(UnlearnError, match=message):
        unlearn(model=str(tiny_llama_dir), forget=str(record_files["forget"]),
                out=str(tmp_path / "run"), method=method, **TINY)


def test_other_texts_too_short_for_a_suffix(tiny_llama_dir, record_files, tmp_path):
    """Pool texts of at most prefix_tokens tokens have no suffix to offer."""
    pool = write_jsonl(tmp_path / "short.jsonl", ["Hi.", "Ok."])
    with pytest.raises(UnlearnError, match="lower --prefix-tokens"):
        unlearn(model=str(tiny_llama_dir), forget=str(record_files["forget"]), pool=str(pool),
                out=str(tmp_path / "run"), method="dpo", **TINY)
