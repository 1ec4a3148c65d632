"""The unlearning loop on tiny models: it trains, drops forgotten samples, stops, and writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unlearnlm import UnlearnConfig, unlearn
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.loading import weights_sha256

TINY = dict(method="icu", prefix_tokens=4, suffix_tokens=None, batch_size=2,
            quick_check=False)  # the check after a run has its own tests (test_audit.py)
NO_METHOD = {k: v for k, v in TINY.items() if k != "method"}


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_memorised_samples_are_dropped_and_the_loop_ends(leaky_llama_dir, record_files, tmp_path):
    """The leaky model reproduces its 4 records; ICU at a high learning rate makes each one fall
    under the drop thresholds, each is dropped exactly once, and the loop stops with none left."""
    before_hash = weights_sha256(leaky_llama_dir)
    out = tmp_path / "run"
    record = unlearn(
        model=str(leaky_llama_dir), forget=str(record_files["forget"]),
        pool=str(record_files["pool"]), out=str(out), lr=3e-3, max_epochs=15,
        bleu_threshold=0.2, bertscore_threshold=0.8, **TINY,
    )
    first = record["epochs"][0]
    assert first["mean"]["bleu"] > 0.5  # memorised before unlearning
    assert record["stopped"]["reason"].startswith("every sample forgotten")
    assert sorted(record["dropped_order"]) == ["s0", "s1", "s2", "s3"]
    last = record["epochs"][-1]
    assert all(not s["active"] for s in last["samples"])
    assert record["stopped"]["epoch"] < 15
    # the input model is untouched; the output differs from it and reloads
    assert weights_sha256(leaky_llama_dir) == before_hash
    changed = [k for k, v in _weights(out).items()
               if not torch.equal(v, _weights(leaky_llama_dir)[k])]
    assert changed
    saved = json.loads((out / "run.json").read_text())
    assert saved["config"]["lr"] == 3e-3
    assert len(saved["forget_set"]["sha256"]) == 64
    assert {p["forget_id"] for p in saved["pairs"]} == {"s0", "s1", "s2", "s3"}
    assert all(p["source"] == "pool" for p in saved["pairs"])
    assert saved["epochs"][1]["losses"]["analogous_kl"] >= 0.0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


def test_one_epoch_changes_parameters_and_records_losses(tiny_gptneo_dir, record_files, tmp_path):
    record = unlearn(
        model=str(tiny_gptneo_dir), forget=str(record_files["forget"]),
        pool=str(record_files["pool"]), out=str(tmp_path / "run"), lr=1e-3, max_epochs=1,
        **TINY,
    )
    assert len(record["epochs"]) == 2  # epoch 0 (before) and epoch 1
    assert set(record["epochs"][1]["losses"]) == {"total", "forget_ga", "analogous_nll",
                                                  "analogous_kl"}
    before, after = _weights(tiny_gptneo_dir), _weights(tmp_path / "run")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_retain_texts_join_the_pairing_candidates(tiny_llama_dir, record_files, tmp_path):
    """With only --retain given, every partner comes from the retain file."""
    record = unlearn(
        model=str(tiny_llama_dir), forget=str(record_files["forget"]),
        retain=str(record_files["pool"]), out=str(tmp_path / "run"), lr=1e-4, max_epochs=1,
        **TINY,
    )
    assert {p["source"] for p in record["pairs"]} == {"retain"}


def test_calibration_sets_thresholds_from_unseen_texts(leaky_llama_dir, record_files, tmp_path):
    record = unlearn(
        model=str(leaky_llama_dir), forget=str(record_files["forget"]),
        pool=str(record_files["pool"]), calibrate_on=str(record_files["calibration"]),
        out=str(tmp_path / "run"), lr=1e-5, max_epochs=1, **TINY,
    )
    thresholds = record["thresholds"]
    assert thresholds["source"].startswith("calibrated")
    assert thresholds["bleu"] != 0.01 and thresholds["bertscore"] != 0.3
    assert 0.0 <= thresholds["ma"] <= 1.0
    assert thresholds["inclusive"] is True


def test_refuses_output_inside_the_input_model(tiny_llama_dir, record_files):
    with pytest.raises(UnlearnError, match="input model"):
        unlearn(model=str(tiny_llama_dir), forget=str(record_files["forget"]),
                pool=str(record_files["pool"]), out=str(tiny_llama_dir / "out"), **TINY)


def test_refuses_non_empty_output_without_overwrite(tiny_llama_dir, record_files, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(UnlearnError, match="--overwrite"):
        unlearn(model=str(tiny_llama_dir), forget=str(record_files["forget"]),
                pool=str(record_files["pool"]), out=str(tmp_path), **TINY)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_config_rejects_bad_values():
    with pytest.raises(UnlearnError, match="method"):
        UnlearnConfig(method="nope")
    with pytest.raises(UnlearnError, match="drop_rule"):
        UnlearnConfig(drop_rule="xor")
    with pytest.raises(UnlearnError, match="lr"):
        UnlearnConfig(lr=0)


def test_same_seed_same_result(leaky_llama_dir, record_files, tmp_path):
    """Two runs with one seed drop the same samples in the same order and end with equal
    weights; the audit trail names versions, hashes and phase timings."""
    runs = []
    for name in ("a", "b"):
        runs.append(unlearn(
            model=str(leaky_llama_dir), forget=str(record_files["forget"]),
            pool=str(record_files["pool"]), out=str(tmp_path / name), lr=2e-3, max_epochs=3,
            bleu_threshold=0.5, bertscore_threshold=0.9, seed=7, **TINY,
        ))
    assert runs[0]["dropped_order"] == runs[1]["dropped_order"]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    record = runs[0]
    assert {"python", "torch", "transformers", "unlearnlm"} <= set(record["versions"])
    assert record["model"]["sha256"] == weights_sha256(leaky_llama_dir)
    assert {"load_model", "training", "scoring"} <= set(record["timings_s"])
    assert all(s["el"] is not None for s in record["epochs"][1]["samples"])
    assert "generation" not in record["epochs"][1]["samples"][0]  # no private text by default


def test_stops_once_the_forget_set_is_under_the_el_ma_thresholds(
    tiny_gptneo_dir, record_files, tmp_path
):
    """A random model memorises nothing: with thresholds above any possible mean (1.1) the
    EL/MA rule fires after the first epoch; with max_epochs 2 and unreachable thresholds the run
    ends at max_epochs."""
    common = dict(model=str(tiny_gptneo_dir), forget=str(record_files["forget"]), method="ga",
                  lr=1e-4, **NO_METHOD)
    record = unlearn(out=str(tmp_path / "a"), el_threshold=1.1, ma_threshold=1.1, **common)
    assert record["stopped"]["epoch"] == 1
    assert "EL/MA thresholds" in record["stopped"]["reason"]
    record = unlearn(out=str(tmp_path / "b"), el_threshold=0.0, ma_threshold=0.0,
                     max_epochs=2, **common)
    assert record["stopped"] == {"epoch": 2, "reason": "max_epochs reached"}
    record = unlearn(out=str(tmp_path / "c"), el_threshold=1.1, ma_threshold=1.1, max_epochs=2,
                     stop_on_el=False, el_every_epoch=False, **common)
    assert record["stopped"] == {"epoch": 2, "reason": "max_epochs reached"}
    assert all(s["el"] is None for e in record["epochs"] for s in e["samples"])


def test_distinct_targets_drop_bigrams_shared_with_the_partner():
    """forget [5, 6, 7, 8, 9], targets from position 2: tokens 7, 8, 9 with bigrams (6, 7),
    (7, 8), (8, 9). The partner [1, 6, 7, 3, 8, 9] holds (6, 7) and (8, 9), so only the target
    at position 3 (token 8 after 7) stays: mask [0, 0, 0, 1, 0]; padding stays unmarked."""
    from unlearnlm.data.batches import collate
    from unlearnlm.train.unlearn import keep_distinct_targets

    batch = collate([[5, 6, 7, 8, 9], [5, 6]], [2, 1], pad_token_id=0, device="cpu")
    keep_distinct_targets(batch, [[1, 6, 7, 3, 8, 9], [4, 4]])
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]


def test_calibrated_thresholds_hold_at_equality_fixed_ones_do_not():
    """The median never-seen BLEU-4 and EL_10 are often exactly 0: a calibrated threshold of 0
    must still let a sample that scores 0 drop and a forget set at EL 0 stop."""
    from unlearnlm.train.scoring import Thresholds, is_forgotten
    from unlearnlm.train.unlearn import _stop_reason

    calibrated = Thresholds(bleu=0.0, bertscore=0.5, el=0.0, ma=0.46, inclusive=True)
    fixed = Thresholds(bleu=0.0, bertscore=0.5, el=0.0, ma=0.46)
    silent = {"bleu": 0.0, "bertscore": 0.5}
    assert is_forgotten(silent, calibrated, "and")
    assert not is_forgotten(silent, fixed, "and")
    assert not is_forgotten({"bleu": 0.01, "bertscore": 0.2}, calibrated, "and")
    assert is_forgotten({"bleu": 0.01, "bertscore": 0.2}, calibrated, "or")
    entry = {"mean": {"el": 0.0, "ma": 0.278}}
    reason = _stop_reason(entry, calibrated, [True])
    assert reason.startswith("forget set under the EL/MA thresholds") and "<= 0.0000" in reason
    assert _stop_reason(entry, fixed, [True]) is None
    assert _stop_reason({"mean": {"el": 0.0, "ma": 0.47}}, calibrated, [True]) is None
    assert Thresholds(**calibrated.as_dict()) == calibrated  # resumes keep the rule


def test_calibration_cache_is_reused_only_for_the_same_model_texts_and_settings(
        leaky_llama_dir, record_files, tmp_path):
    cache = tmp_path / "calibration.json"
    common = dict(model=str(leaky_llama_dir), forget=str(record_files["forget"]),
                  pool=str(record_files["pool"]), calibrate_on=str(record_files["calibration"]),
                  calibration_cache=str(cache), lr=1e-5, max_epochs=1, **TINY)
    first = unlearn(out=str(tmp_path / "a"), **common)["thresholds"]
    stored = json.loads(cache.read_text())
    assert stored["thresholds"] == first
    assert stored["key"]["calibration_sha256"] and stored["key"]["el_n"] == 10
    stored["thresholds"]["ma"] = 0.123  # a marker: a reused file shows it
    cache.write_text(json.dumps(stored))
    assert unlearn(out=str(tmp_path / "b"), **common)["thresholds"]["ma"] == 0.123
    third = unlearn(out=str(tmp_path / "c"), **{**common, "el_n": 3})["thresholds"]
    assert third["ma"] == first["ma"] != 0.123  # another setting: calibrated anew, and stored
    assert json.loads(cache.read_text())["key"]["el_n"] == 3


def test_calibrated_stop_uses_the_mean_and_the_drop_test_the_quantile(leaky_llama_dir,
                                                                      record_files):
    """The stop test compares the forget set's mean EL/MA, so its calibrated thresholds are the
    never-seen texts' means (Jang et al.); the per-sample drop test keeps the quantile.
    Calibrating on 2 memorised + 3 unseen texts makes mean and median differ."""
    import numpy as np

    from unlearnlm.data.texts import read_records, split_records
    from unlearnlm.lm.loading import load_model
    from unlearnlm.train.scoring import calibrate, generation_scores, memorisation_scores

    model, tokenizer, _ = load_model(str(leaky_llama_dir))
    records = (read_records(record_files["forget"])[:2]
               + read_records(record_files["calibration"], role="calibration"))
    samples = split_records(records, tokenizer, 4, None, role="calibration")
    config = UnlearnConfig(**TINY)
    with torch.no_grad():
        gen = generation_scores(model, tokenizer, samples, config)
        mem = memorisation_scores(model, samples, tokenizer.pad_token_id, config.el_n)
    assert np.mean(mem["ma"]) != pytest.approx(np.median(mem["ma"]))

    by_mean = calibrate(model, tokenizer, samples, config, "texts.jsonl")
    assert by_mean.ma == pytest.approx(np.mean(mem["ma"]))
    assert by_mean.el == pytest.approx(np.mean(mem["el"]))
    assert by_mean.bleu == pytest.approx(np.median([g["bleu"] for g in gen]))
    assert by_mean.bertscore == pytest.approx(np.median([g["bertscore"] for g in gen]))
    assert "EL and MA at the mean" in by_mean.source

    quantile = UnlearnConfig(**TINY, calibration_stop="quantile", calibration_quantile=0.25)
    by_quantile = calibrate(model, tokenizer, samples, quantile, "texts.jsonl")
    assert by_quantile.ma == pytest.approx(np.quantile(mem["ma"], 0.25))
    assert by_quantile.el == pytest.approx(np.quantile(mem["el"], 0.25))
    assert by_quantile.bertscore == pytest.approx(np.quantile([g["bertscore"] for g in gen], 0.25))

    with pytest.raises(UnlearnError, match="calibration_stop"):
        UnlearnConfig(calibration_stop="median")
