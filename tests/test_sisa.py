"""SISA (``unlearnlm sisa train`` / ``forget``) on the tiny Llama: the split depends on each text
alone, a deletion retrains exactly what a training from scratch without the texts produces and
copies the other shards unchanged, and the ensemble decodes from the mean distribution."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CALIBRATION_RECORDS, FORGET_RECORDS, LLAMA_CORPUS, POOL_RECORDS, write_jsonl
from unlearnlm.cli import main
from unlearnlm.data.texts import Record
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.loading import load_model
from unlearnlm.train.sisa import (
    SisaForgetSettings,
    SisaTrainSettings,
    epoch_order,
    place,
    read_sisa,
    sisa_ensemble,
    sisa_forget,
    sisa_train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = list(dict.fromkeys(LLAMA_CORPUS + FORGET_RECORDS + POOL_RECORDS + CALIBRATION_RECORDS))
TRAIN = ["--shards", "2", "--slices", "2", "--epochs", "3", "--lr", "1e-2", "--batch-size", "2",
         "--lora-rank", "2", "--seed", "5"]


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its relative path, as the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _adapter(folder: Path, shard: int, stage: int) -> dict[str, torch.Tensor]:
    return load_file(folder / f"shard-{shard}" / f"slice-{stage}" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("sisa-data") / "train.jsonl", TEXTS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir, data) -> Path:
    out = tmp_path_factory.mktemp("sisa") / "trained"
    assert main(["sisa", "train", "--model", str(tiny_llama_dir), "--data", str(data),
                 "--out", str(out), *TRAIN]) == 0
    return out


def test_a_texts_place_depends_on_that_text_alone():
    """Dropping texts moves no other text: same shard, same slice, same relative order within
    an epoch; the places cover every shard and slice and stay in range."""
    records = [Record(f"r{i}", t) for i, t in enumerate(TEXTS)]
    every = place(records, 3, 2, seed=0)
    fewer = place(records[::2], 3, 2, seed=0)
    where = {p.key: (p.shard, p.slice) for p in every}
    assert all(where[p.key] == (p.shard, p.slice) for p in fewer)
    assert {(p.shard, p.slice) for p in every} == {(k, r) for k in range(3) for r in (1, 2)}
    order = [p.key for p in epoch_order(every, 0, 0, 1, 1)]
    assert [p.key for p in epoch_order(fewer, 0, 0, 1, 1)] == [k for k in order
                                                              if k in {p.key for p in fewer}]
    assert order != [p.key for p in epoch_order(every, 0, 0, 1, 2)]  # each epoch reshuffles
    assert place(records, 3, 2, seed=1) != every  # the seed decides the split


def test_forgetting_retrains_exactly_what_training_without_the_text_gives(
        trained, tiny_llama_dir, data, tmp_path):
    """Forget one text of slice 2: its shard's slice-0 and slice-1 checkpoints are copied, slice 2
    retrains; the other shard is copied byte for byte; the input folder is untouched. Every
    adapter equals the one ``sisa train`` makes from the data without that text, same seed."""
    record, texts = read_sisa(trained)
    assert record["shard_sizes"] == [sum(t.shard == k for t in texts) for k in (0, 1)]
    victim = next(t for t in texts if t.slice == 2)
    other = 1 - victim.shard
    before = _files(trained)
    forget = write_jsonl(tmp_path / "forget.jsonl", [victim.text])
    out = tmp_path / "forgot"
    assert main(["sisa", "forget", str(trained), "--forget", str(forget), "--out",
                 str(out)]) == 0
    assert _files(trained) == before

    fewer = write_jsonl(tmp_path / "fewer.jsonl", [t for t in TEXTS if t != victim.text])
    scratch = tmp_path / "scratch"
    assert main(["sisa", "train", "--model", str(tiny_llama_dir), "--data", str(fewer),
                 "--out", str(scratch), *TRAIN]) == 0

    after = _files(out)
    for name, digest in before.items():
        if name.startswith(f"shard-{other}/") or name.startswith(f"shard-{victim.shard}/slice-0")\
                or name.startswith(f"shard-{victim.shard}/slice-1"):
            assert after[name] == digest, name
    for shard in (0, 1):
        for stage in (0, 1, 2):
            mine, theirs = _adapter(out, shard, stage), _adapter(scratch, shard, stage)
            assert mine.keys() == theirs.keys()
            for key in mine:
                assert torch.equal(mine[key], theirs[key]), (shard, key)
    retrained, original = _adapter(out, victim.shard, 2), _adapter(trained, victim.shard, 2)
    assert any(not torch.allclose(retrained[k], original[k]) for k in retrained)
    trained_b = [k for k in original if "lora_B" in k]
    assert any(original[k].abs().sum() > 0 for k in trained_b)  # training moved B off zero

    new, left = read_sisa(out)
    assert victim.key not in {t.key for t in left} and len(left) == len(texts) - 1
    assert victim.text not in (out / "texts.jsonl").read_text()
    assert new["deletions"][-1]["retrained_from_slice"] == {str(victim.shard): 2}
    assert new["deletions"][-1]["ids"] == [victim.id]


def test_the_ensemble_decodes_from_the_mean_of_its_shards_distributions(trained, tiny_llama_dir):
    """Greedy decoding by hand: each shard's adapter merged into its own copy of the base model,
    the next token the argmax of the mean of their probabilities. The ensemble's generation and
    its teacher-forced log-probabilities agree with it, and differ from a single shard's."""
    ensemble = sisa_ensemble(trained)
    record, _ = read_sisa(trained)
    shards = [load_model(str(trained / f"shard-{k}" / "slice-2"))[0].eval() for k in (0, 1)]
    tokenizer = ensemble.tokenizer
    prefixes = [tokenizer(t, add_special_tokens=False)["input_ids"][:4] for t in TEXTS[:3]]
    by_hand = []
    for prefix in prefixes:
        ids = list(prefix)
        for _ in range(6):
            with torch.no_grad():
                probs = [torch.softmax(m(input_ids=torch.tensor([ids])).logits[0, -1], -1)
                         for m in shards]
            ids.append(int(torch.stack(probs).mean(0).argmax()))
        by_hand.append(ids[len(prefix):])
    assert ensemble.generate(prefixes, 6) == by_hand

    sequence = prefixes[0] + by_hand[0]
    with torch.no_grad():
        per_shard = [torch.log_softmax(m(input_ids=torch.tensor([sequence])).logits[0, :-1], -1)
                     for m in shards]
    wanted = torch.tensor(sequence[1:])[:, None]
    mean = torch.stack([p.gather(-1, wanted).exp() for p in per_shard]).mean(0).log().squeeze(-1)
    got = torch.tensor(ensemble.targets([sequence])[0].logprobs)
    assert torch.allclose(got, mean, atol=1e-5)
    assert not torch.allclose(got, per_shard[0].gather(-1, wanted).squeeze(-1), atol=1e-3)
    assert record["settings"]["shards"] == len(ensemble.members) == 2


def test_bad_input_is_one_line_and_writes_nothing(trained, tiny_llama_dir, data, tmp_path,
                                                  capsys):
    out = tmp_path / "out"
    stranger = write_jsonl(tmp_path / "stranger.jsonl", ["A text nobody trained on."])
    assert main(["sisa", "forget", str(trained), "--forget", str(stranger), "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "1 of the 1 forget texts" in err and "not training texts" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()

    with pytest.raises(UnlearnError, match="is not a SISA folder"):
        sisa_forget(SisaForgetSettings(sisa_dir=str(data.parent), forget=str(stranger),
                                       out=str(out)))
    with pytest.raises(UnlearnError, match="overlaps the input"):
        sisa_forget(SisaForgetSettings(sisa_dir=str(trained), forget=str(stranger),
                                       out=str(trained / "inside")))
    with pytest.raises(UnlearnError, match="gets none of the"):
        sisa_train(SisaTrainSettings(model=str(tiny_llama_dir), data=str(data), out=str(out),
                                     shards=40))
    with pytest.raises(UnlearnError, match="shards must be positive"):
        SisaTrainSettings(shards=0)
    assert main(["sisa", "forget", str(trained), "--out", str(out)]) == 2
    assert "--forget is required" in capsys.readouterr().err
    assert not out.exists()


def test_the_record_says_what_trained(trained, data):
    """sisa.json: the settings, each text's place (no text itself) and a time for every stage."""
    record = json.loads((trained / "sisa.json").read_text())
    assert record["settings"]["shards"] == 2 and record["settings"]["slices"] == 2
    assert set(record["stages"]) == {"0/1", "0/2", "1/1", "1/2"}
    assert all(seconds > 0 for seconds in record["stages"].values())
    assert len(record["texts"]) == len(TEXTS)
    assert not any(t in json.dumps(record) for t in TEXTS)
    assert record["deletions"] == []


def test_flags_come_from_the_settings_and_a_config_file(tmp_path):
    """YAML under flags; the comma list; the folder positional or as --sisa-dir."""
    from unlearnlm.cli import build_parser
    from unlearnlm.settings import settings_from_args

    config = tmp_path / "sisa.yaml"
    config.write_text("shards: 3\nlora-rank: 4\nepochs: 2\n")
    args = build_parser().parse_args([
        "sisa", "train", "--config", str(config), "--model", "m", "--data", "d.jsonl", "--out",
        "o", "--lora-rank", "2", "--lora-target-modules", "q_proj,v_proj", "--cpu"])
    s = settings_from_args(SisaTrainSettings, args)
    assert (s.shards, s.lora_rank, s.epochs, s.cpu) == (3, 2, 2, True)
    assert s.lora_target_modules == ["q_proj", "v_proj"]
    for given in (["DIR"], ["--sisa-dir", "DIR"]):
        args = build_parser().parse_args(["sisa", "forget", *given, "--forget", "f.jsonl",
                                          "--out", "o"])
        assert settings_from_args(SisaForgetSettings, args).sisa_dir == "DIR"


def test_a_shard_emptied_by_a_deletion_keeps_its_initial_adapter(trained, tmp_path, caplog):
    """Forget every text of shard 1: its checkpoints all equal its initial adapter (slice 0,
    copied), shard 0 is copied unchanged, and a warning names the shard."""
    _, texts = read_sisa(trained)
    forget = write_jsonl(tmp_path / "all.jsonl", [t.text for t in texts if t.shard == 1])
    out = tmp_path / "emptied"
    with caplog.at_level("WARNING", logger="unlearnlm.train.sisa"):
        sisa_forget(SisaForgetSettings(sisa_dir=str(trained), forget=str(forget), out=str(out)))
    assert "shard 1 holds no text now" in caplog.text
    initial = _adapter(trained, 1, 0)
    for stage in (1, 2):
        assert all(torch.equal(initial[k], v) for k, v in _adapter(out, 1, stage).items())
    assert _files(out / "shard-0") == _files(trained / "shard-0")
    assert {t.shard for t in read_sisa(out)[1]} == {0}


def test_the_bench_row_trains_on_forget_and_retain_then_deletes_the_forget_set(
        tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    """``bench --methods sisa``: the SISA training holds forget + retain texts, the scored
    folder only the retain texts; the row has the suite's numbers, the deletion's time and its
    note; a re-run reuses both folders and the evaluation; other SISA settings are refused;
    the audit leaves the ensemble out."""
    from test_bench import NONMEMBER_RECORDS, RETAIN_RECORDS
    from unlearnlm.bench.runner import BenchSettings, run_bench

    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    files = {name: str(write_jsonl(tmp_path / f"{name}.jsonl", texts)) for name, texts in [
        ("forget", FORGET_RECORDS), ("retain", RETAIN_RECORDS), ("pool", POOL_RECORDS),
        ("calibration", CALIBRATION_RECORDS), ("nonmember", NONMEMBER_RECORDS)]}
    out = tmp_path / "bench"
    settings = BenchSettings(
        model=str(tiny_llama_dir), forget_set=files["forget"], retain=files["retain"],
        pool=files["pool"], calibration=files["calibration"], nonmember=files["nonmember"],
        out=str(out), methods="sisa", tasks=["forget", "mia"], limit=2, prefix_tokens=4,
        suffix_tokens=None, batch_size=2, finetune_lr=3e-3, finetune_epochs=40,
        finetune_target=0.9, sisa_shards=2, sisa_epochs=2, sisa_lora_rank=2)
    results = run_bench(settings)
    row = {r["name"]: r for r in results["rows"]}["sisa"]
    _, before = read_sisa(out / "methods" / "sisa-trained")
    _, after = read_sisa(out / "methods" / "sisa")
    assert sorted(t.text for t in before) == sorted(FORGET_RECORDS + RETAIN_RECORDS)
    assert sorted(t.text for t in after) == sorted(RETAIN_RECORDS)
    deletion = json.loads((out / "methods" / "sisa" / "sisa.json").read_text())["deletions"][-1]
    assert row["role"] == "sisa" and row["wall_time_s"] == deletion["seconds"]
    assert row["sisa"]["texts_deleted"] == len(FORGET_RECORDS)
    assert row["ma"] is not None and row["mia_auc"] is not None
    assert row["weights_mia_auc"] == row["mia_auc"]
    markdown = (out / "results.md").read_text()
    assert "forget texts deleted exactly" in markdown and "- sisa: an exact deletion" in markdown

    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("methods/*/sisa.json"),
                                                *out.glob("eval/*/eval.json")]}
    assert len(stamps) == 2 + 3
    run_bench(settings)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    with pytest.raises(UnlearnError, match="other settings.*epochs"):
        run_bench(BenchSettings(**{**vars(settings), "sisa_epochs": 3}))
    assert BenchSettings(methods="ga,sisa,dp").audited_methods == ["ga", "dp"]


def test_eval_scores_a_sisa_folder_as_its_ensemble(trained, tmp_path):
    """``unlearnlm eval --model DIR`` on a SISA folder: the forget set's MA in eval.json is the
    ensemble's, computed here by hand from its teacher-forced argmax."""
    from unlearnlm.data.texts import split_records

    forget = write_jsonl(tmp_path / "forget.jsonl", TEXTS[:3])
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(trained), "--forget", str(forget), "--nonmember",
                 str(write_jsonl(tmp_path / "other.jsonl", TEXTS[3:6])), "--tasks", "forget",
                 "--prefix-tokens", "4", "--suffix-tokens", "null", "--out", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    ensemble = sisa_ensemble(trained)
    samples = split_records([Record(str(i), t) for i, t in enumerate(TEXTS[:3])],
                            ensemble.tokenizer, 4, None)
    by_hand = []
    for sample, argmax in zip(samples, ensemble.next_token_argmax([s.input_ids for s in samples]),
                              strict=True):
        start = len(sample.prefix_ids)
        hits = [argmax[t - 1] == sample.input_ids[t] for t in range(start, len(sample.input_ids))]
        by_hand.append(sum(hits) / len(hits))
    assert result["tasks"]["forget"]["aggregate"]["ma"] == pytest.approx(sum(by_hand) / 3)
