"""finetune() measures the suffix MA of the metrics module; cached_finetune() trains once per
model, data and settings."""

from __future__ import annotations

import pytest

from conftest import FORGET_RECORDS, write_jsonl
from unlearnlm.data.texts import read_records, split_records
from unlearnlm.metrics.scores import mean, suffix_memorization_accuracy
from unlearnlm.train import finetune as finetune_module
from unlearnlm.train.finetune import cached_finetune, finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_finetune_reports_the_suffix_ma_of_the_model_it_saves(tiny_llama_dir, tmp_path):
    """Two epochs, no target: the last epoch's suffix_accuracy is the mean
    ``suffix_memorization_accuracy`` of the saved model on the same split samples."""
    from unlearnlm.lm.loading import load_model

    data = write_jsonl(tmp_path / "train.jsonl", FORGET_RECORDS)
    record = finetune(str(tiny_llama_dir), str(data), str(tmp_path / "out"), max_epochs=2,
                      lr=3e-3, prefix_tokens=4, suffix_tokens=None, target_accuracy=None,
                      progress=False)
    assert len(record["epochs"]) == 2 and not record["memorised"]
    model, tokenizer, _ = load_model(str(tmp_path / "out"))
    samples = split_records(read_records(data), tokenizer, 4, None)
    expected = mean(suffix_memorization_accuracy(model, samples))
    assert record["suffix_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_cached_finetune_trains_once_per_model_data_and_settings(
    tiny_llama_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "train.jsonl", FORGET_RECORDS[:2])
    settings = {"max_epochs": 1, "lr": 1e-3, "prefix_tokens": 4, "suffix_tokens": None,
                "target_accuracy": None, "progress": False}
    lines: list[str] = []
    first, record = cached_finetune(str(tiny_llama_dir), data, "leaky", say=lines.append,
                                    **settings)
    assert first.parent == tmp_path / "cache" / "finetuned" and first.name.startswith("leaky-")
    assert lines[-1].startswith("Fine-tuning") and (first / "model.safetensors").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(finetune_module, "finetune", no_training)
    same_bytes = write_jsonl(tmp_path / "elsewhere.jsonl", FORGET_RECORDS[:2])
    again, cached = cached_finetune(str(tiny_llama_dir), same_bytes, "leaky", say=lines.append,
                                    **{**settings, "progress": True})
    assert again == first and cached == record and lines[-1].startswith("Reusing the cached")
    with pytest.raises(AssertionError, match="trained again"):  # other settings: another key
        cached_finetune(str(tiny_llama_dir), data, "leaky", **{**settings, "lr": 2e-3})
    with pytest.raises(AssertionError, match="trained again"):  # other data: another key
        cached_finetune(str(tiny_llama_dir), write_jsonl(tmp_path / "b.jsonl", FORGET_RECORDS),
                        "leaky", **settings)


@pytest.mark.parametrize("loss_on", ["all", "suffix"])
def test_loss_on_suffix_trains_on_the_answers_only(tiny_llama_dir, tmp_path, loss_on):
    """One epoch of one batch: its loss is the base model's mean NLL over the tokens that carry
    the loss, computed before the step: every token after the first ('all') or the answer
    tokens after "Question: ...\\nAnswer:" ('suffix')."""
    import json

    from unlearnlm.lm.interface import LM

    qa = [("Question: Who is Alice?\nAnswer:", " Alice Smith is a baker."),
          ("Question: Where does Bob live?\nAnswer:", " Bob lives at 12 Station Road.")]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prefix": p, "suffix": s}) + "\n" for p, s in qa))
    record = finetune(str(tiny_llama_dir), str(data), str(tmp_path / "out"), max_epochs=1,
                      lr=1e-3, batch_size=2, target_accuracy=None, loss_on=loss_on,
                      progress=False)
    lm = LM.load(str(tiny_llama_dir))
    samples = split_records(read_records(data), lm.tokenizer)
    starts = [len(x.prefix_ids) if loss_on == "suffix" else 1 for x in samples]
    scored = lm.targets([x.input_ids for x in samples], starts)
    logprobs = [lp for t in scored for lp in t.logprobs]
    assert record["epochs"][0]["loss"] == pytest.approx(-sum(logprobs) / len(logprobs), rel=1e-5)
    assert record["settings"]["loss_on"] == loss_on


def test_loss_on_suffix_is_refused_under_dp():
    from unlearnlm.errors import UnlearnError
    from unlearnlm.settings import FinetuneSettings

    with pytest.raises(UnlearnError, match="--loss-on all"):
        FinetuneSettings(model="m", data="d", out="o", dp_epsilon=8.0, loss_on="suffix")
