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
            el_every_epoch=False, ma_threshold=0.0, guard_ppl_factor=None,
            quick_check=False)  # the check after a run has its own tests (test_audit.py)


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


def _rmu(tiny_llama_dir, record_files, out, **settings):
    return unlearn(model=str(tiny_llama_dir), forget=str(record_files["forget"]),
                   retain=str(record_files["calibration"]), out=str(out), method="rmu",
                   **{**TINY, **settings})


def test_rmu_moves_only_what_lies_under_its_block(tiny_llama_dir, record_files, tmp_path):
    """RMU's terms read the output of block 0 of the 2-block Llama: the embeddings and block 0
    change, block 1, the final norm and the output layer (not tied here) get no gradient and
    stay as they were. The block is recorded with the other term settings."""
    out = tmp_path / "run"
    record = _rmu(tiny_llama_dir, record_files, out, rmu_layer=0, rmu_coefficient=4.0)
    before, after = _weights(tiny_llama_dir), _weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "model.embed_tokens.weight" in changed
    assert any(k.startswith("model.layers.0.") for k in changed)
    assert not any(k.startswith(("model.layers.1.", "model.norm", "lm_head")) for k in changed)
    options = record["method"]["term_options"]
    assert (options["rmu_layer"], options["rmu_coefficient"]) == (0, 4.0)


def test_rmu_block_follows_the_trained_layers(tiny_llama_dir, record_files, tmp_path):
    """With the last block alone training, the default block is that one (7/32 of 2 blocks is
    block 0, which could not move); asking for block 0 then, or for a block the model lacks, is
    a one-line error before anything is written."""
    record = _rmu(tiny_llama_dir, record_files, tmp_path / "run", trainable_layers=1)
    assert record["method"]["term_options"]["rmu_layer"] == 1
    assert record["epochs"][1]["losses"]["forget_rmu"] > 0
    for settings, message in [({"trainable_layers": 1, "rmu_layer": 0}, "--rmu-layer 1 or more"),
                              ({"rmu_layer": 2}, "rmu_layer 2 is not a block of this model")]:
        out = tmp_path / "refused"
        with pytest.raises(UnlearnError, match=message):
            _rmu(tiny_llama_dir, record_files, out, **settings)
        assert not out.exists()
