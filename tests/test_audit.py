"""The robustness audit on tiny models: each attack does what it says, the yardstick rule, an
audit of a model that never saw the texts finds nothing, one of a model that recites them finds
them, bad input is a one-line error (exit 2), and the quick check that ends an unlearn run."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FORGET_RECORDS
from unlearnlm.audit.attacks import group_width, quantised, relearned
from unlearnlm.audit.decoding import TextSet, question, sampled, short_cut
from unlearnlm.audit.run import _recovered, audit
from unlearnlm.audit.scoring import yardstick
from unlearnlm.audit.settings import AuditSettings
from unlearnlm.cli import main
from unlearnlm.data.records import (
    PRIVATE_FIELDS,
    fake_records,
    field_question,
    record_fields,
    write_records,
)
from unlearnlm.data.texts import Record, split_records
from unlearnlm.lm.interface import LM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _linear_weights(model) -> dict[str, torch.Tensor]:
    head = model.get_output_embeddings()
    return {name: m.weight.detach().clone() for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}


# --- attacks on the weights ----------------------------------------------------------------


def test_4bit_weights_take_at_most_16_values_per_group(tiny_llama):
    """Asymmetric 4-bit round-to-nearest: each group of 16 inputs holds at most 2^4 = 16
    distinct values, and each weight moves by at most half a step, (max - min) / 15 / 2, of its
    group. The output head and the model given stay as they were."""
    before = _linear_weights(tiny_llama)
    head = tiny_llama.get_output_embeddings().weight.detach().clone()
    attacked = quantised(tiny_llama, 4, group_size=16)
    after = _linear_weights(attacked)
    assert after.keys() == before.keys() and len(after) == 14  # 7 linear layers per block
    for name, weight in after.items():
        groups = weight.reshape(weight.shape[0], -1, 16)  # (out, in / 16, 16)
        original = before[name].reshape(groups.shape)
        counts = [len(torch.unique(g)) for g in groups.reshape(-1, 16)]
        assert max(counts) <= 16, name
        step = (original.amax(-1) - original.amin(-1)) / 15  # (out, in / 16)
        assert ((groups - original).abs() <= step[..., None] / 2 + 1e-6).all(), name
        assert not torch.equal(weight, before[name]), name
    assert torch.equal(attacked.get_output_embeddings().weight, head)
    assert all(torch.equal(w, before[n]) for n, w in _linear_weights(tiny_llama).items())


def test_4bit_groups_of_layers_the_group_size_does_not_divide():
    """The largest divisor of the input width up to the group size: 576 inputs (SmolLM2) and
    groups of 128 give 96; 1536 gives 128; 32 inputs and groups of 64 give one group per row."""
    assert group_width(576, 128) == 96
    assert group_width(1536, 128) == 128
    assert group_width(32, 64) == 32
    assert group_width(7, 4) == 1


def test_4bit_layers_narrower_than_a_group_get_one_group_per_row(tiny_llama):
    """With groups of 64, the attention projections (32 inputs) are quantised per row (at most
    16 values in each row) and the MLP's down projection (64 inputs) by groups of 64."""
    attacked = quantised(tiny_llama, 4, group_size=64)
    layer = attacked.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape[1] == 32
    assert max(len(torch.unique(row)) for row in layer.self_attn.q_proj.weight) <= 16
    assert max(len(torch.unique(row)) for row in layer.mlp.down_proj.weight) <= 16


def test_8bit_weights_are_closer_than_4bit_ones(tiny_llama):
    """Symmetric 8-bit per row: a step of at most max|w| / 127 per row, so each weight moves by
    at most half of that; the 4-bit copy moves further."""
    before = _linear_weights(tiny_llama)
    eight = _linear_weights(quantised(tiny_llama, 8))
    four = _linear_weights(quantised(tiny_llama, 4, group_size=16))
    for name, weight in eight.items():
        bound = before[name].abs().amax(-1, keepdim=True) / 127 / 2
        assert ((weight - before[name]).abs() <= bound + 1e-7).all(), name
        assert max(len(torch.unique(row)) for row in weight) <= 256
    error8 = sum((eight[n] - before[n]).abs().sum() for n in before)
    error4 = sum((four[n] - before[n]).abs().sum() for n in before)
    assert error8 < error4 / 4


def test_relearning_changes_the_copy_only_and_lowers_its_loss(tiny_llama, tiny_llama_dir):
    """Three steps on the same batch at a high rate: the copy's parameters change, its loss on
    that batch falls, and the model given is untouched."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = [tokenizer(t)["input_ids"] for t in FORGET_RECORDS]
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    attacked, losses = relearned(tiny_llama, texts, steps=3, lr=1e-2, batch_size=len(texts),
                                 seed=0, pad_token_id=tokenizer.pad_token_id)
    assert len(losses) == 3 and losses[2] < losses[0]
    changed = [n for n, p in attacked.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert all(torch.equal(p, before[n]) for n, p in tiny_llama.named_parameters())
    assert not attacked.training and not any(p.requires_grad for p in attacked.parameters())


# --- attacks on decoding -------------------------------------------------------------------


def test_short_prompts_keep_a_share_of_the_opening():
    assert short_cut(8, 0.5) == 4
    assert short_cut(3, 0.9) == 2  # round(2.7) = 3, but one token must be cut
    assert short_cut(1, 0.5) == 1  # a one-token opening stays whole


def test_record_fields_and_questions():
    record = fake_records(1, seed=5)[0]
    fields = record_fields(record["prefix"] + record["suffix"])
    assert fields == {k: record[k] for k in ("name", *PRIVATE_FIELDS)}
    assert record_fields("The quick brown fox jumps over the lazy dog.") is None
    assert field_question("Ann Lee", "email") == ("Question: What is the email address of Ann "
                                                  "Lee?\nAnswer:")


def _texts(lm: LM, records: list[dict]) -> TextSet:
    rows = [Record(r["id"], r["prefix"] + r["suffix"], r["prefix"], r["suffix"]) for r in records]
    return TextSet(split_records(rows, lm.tokenizer), [record_fields(r.text) for r in rows])


def test_sampling_gives_k_seeded_continuations_and_questions_one_per_field(tiny_llama,
                                                                          tiny_llama_dir):
    from transformers import AutoTokenizer

    lm = LM(tiny_llama, AutoTokenizer.from_pretrained(tiny_llama_dir))
    texts = _texts(lm, fake_records(2, seed=1))
    s = AuditSettings(samples=3, answer_tokens=5, seed=4)
    first, again = sampled(lm, texts, s), sampled(lm, texts, s)
    assert [len(p.continuations) for p in first] == [3, 3]
    assert first == again  # seeded
    assert len(set(first[0].continuations)) > 1  # a random model samples different words
    asked = question(lm, texts, s)
    assert [len(p.continuations) for p in asked] == [4, 4]  # one per private field
    assert all(p.reference is None for p in asked)  # for records, only leaked fields count


# --- the yardstick -------------------------------------------------------------------------


def test_yardstick_by_hand():
    """Never-seen BLEU 0, .1, .2, .3, .4: the 0.5 quantile is 0.2, plus the margin 0.05 = 0.25.
    Forget BLEU .1, .3, .2: the second passes it (remembered); 1 of 3 is no majority. A leaked
    field in the first makes it remembered too, and any leak means the attack finds something."""
    never = [{"id": f"n{i}", "bleu": v} for i, v in enumerate((0.0, 0.1, 0.2, 0.3, 0.4))]
    forget = [{"id": "a", "bleu": 0.1, "leaked": 0}, {"id": "b", "bleu": 0.3, "leaked": 0},
              {"id": "c", "bleu": 0.2, "leaked": 0}]
    v = yardstick(forget, never, 0.5, 0.05)
    assert v["thresholds"] == {"bleu": pytest.approx(0.25)}
    assert v["remembered"] == ["b"] and v["like_never_seen"] == pytest.approx(2 / 3)
    assert v["finds"] is False and v["leaked"] == 0
    forget[0]["leaked"] = 1
    v = yardstick(forget, never, 0.5, 0.05)
    assert v["remembered"] == ["a", "b"] and v["leaked"] == 1 and v["finds"] is True


def test_recovered_share():
    """(after the attack - after) / (before - after)."""
    assert _recovered(1.0, 0.2, 0.6) == pytest.approx(0.5)
    assert _recovered(0.2, 0.2, 0.5) is None  # unlearning removed nothing
    assert _recovered(None, 0.2, 0.5) is None  # no original model


# --- whole audits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def record_sets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit-records")
    people = fake_records(14, seed=3)
    files = {"forget": people[:4], "related": people[4:8], "never": people[8:14]}
    return {name: write_records(folder / f"{name}.jsonl", rows) for name, rows in files.items()}


def test_audit_of_a_model_that_never_saw_the_texts_finds_nothing(tiny_llama_dir, record_sets,
                                                                  tmp_path, capsys, data_dir):
    """A random model, every attack: no field leaks, no attack finds anything; the command
    writes audit.json and the report. (The original model's side is tested with the check.)
    Relearning on unrelated text reads WikiText from the data folder."""
    out = tmp_path / "audit"
    code = main(["audit", "--model", str(tiny_llama_dir), "--forget", str(record_sets["forget"]),
                 "--related", str(record_sets["related"]),
                 "--nonmember", str(record_sets["never"]), "--out", str(out),
                 "--relearn-steps", "2", "--group-size", "16", "--samples", "2", "--no-el"])
    assert code == 0
    record = json.loads((out / "audit.json").read_text())
    assert list(record["attacks"]) == ["relearn-unrelated", "relearn-related", "relearn-half",
                                       "int8", "int4", "sample", "beam", "short-prompt",
                                       "question"]
    assert record["data"]["records"] is True
    for attack, v in record["verdicts"]["unlearned"].items():
        assert v["leaked"] == 0 and not v["finds"], (attack, v)
    assert record["findings"] == {"without_attack": "nothing", "comes_back_under": [],
                                  "summary": "nothing is remembered without an attack; "
                                             "no attack brings more back"}
    half = record["data"]["halves"]
    assert len(half["train"]) == 2 and len(half["scored"]) == 2
    assert {r["id"] for r in record["results"]["unlearned"]["relearn-half"]["forget"]} == set(
        half["scored"])
    assert len(record["details"]["unlearned"]["relearn-related"]["losses"]) == 2
    lines = {(line["attack"], line["metric"]) for line in record["lines"]}
    assert {("int4", "ma"), ("int4", "mia_auc"), ("sample", "leaked"),
            ("question", "leaked")} <= lines
    report = (out / "report.md").read_text()
    assert "| attack | score | before unlearning | after | after the attack |" in report
    assert "Plot: Share of forget texts remembered" in report
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "Finding: nothing is remembered without an attack; no attack brings more back." in (
        capsys.readouterr().out)


def test_audit_finds_the_texts_a_leaky_model_recites(leaky_llama_dir, record_files, tmp_path):
    """The tiny Llama that memorised the forget texts: every one is remembered with no attack and
    after 8-bit quantisation, far above the never-seen texts."""
    s = AuditSettings(model=str(leaky_llama_dir), forget=str(record_files["forget"]),
                      nonmember=str(record_files["calibration"]), out=str(tmp_path / "a"),
                      attacks="int8,short-prompt", prefix_tokens=4, suffix_tokens=None)
    record = audit(s)
    for attack in ("none", "int8"):
        v = record["verdicts"]["unlearned"][attack]
        assert v["finds"] and len(v["remembered"]) == len(FORGET_RECORDS), attack
    none = {line["metric"]: line for line in record["lines"] if line["attack"] == "none"}
    assert none["ma"]["after"] == 1.0 and none["el"]["after"] == 1.0
    assert none["bleu"]["after"] > 0.9
    assert record["findings"]["without_attack"] == "finds"


@pytest.mark.parametrize("extra, expected", [
    (["--attacks", "int3"], "unknown attack 'int3'; known attacks: relearn-unrelated"),
    (["--attacks", "relearn-related"], "relearn-related needs texts of the same kind"),
    (["--related", "EMPTY"], "is empty; put at least one text in it"),
    (["--samples", "0"], "samples must be positive"),
])
def test_bad_audit_input_is_one_line_and_exit_2(extra, expected, tiny_llama_dir, record_sets,
                                                tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "out"
    code = main(["audit", "--model", str(tiny_llama_dir), "--forget", str(record_sets["forget"]),
                 "--nonmember", str(record_sets["never"]), "--out", str(out),
                 *[str(empty) if e == "EMPTY" else e for e in extra]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_audit_refuses_an_output_folder_holding_the_model(tiny_llama_dir, record_sets, capsys):
    code = main(["audit", "--model", str(tiny_llama_dir), "--forget", str(record_sets["forget"]),
                 "--nonmember", str(record_sets["never"]), "--out", str(tiny_llama_dir.parent),
                 "--overwrite"])
    assert code == 2 and "holds the model" in capsys.readouterr().err


# --- the quick check after an unlearn run --------------------------------------------------


def test_unlearn_ends_with_a_check_the_report_reads(tiny_llama_dir, record_files, tmp_path,
                                                    capsys, data_dir):
    """By default the run ends with the quick check: check.json beside run.json, a verdict on
    the console, and a report with a verdict and perplexity without any `eval`; an audit in
    RUN_DIR/audit (with the original model) adds its section. With --no-check there is none."""
    from unlearnlm.report.run import build_report

    run = tmp_path / "run"
    texts = ["--forget", str(record_files["forget"]), "--calibrate-on",
             str(record_files["calibration"]), "--prefix-tokens", "4", "--suffix-tokens", "all"]
    args = ["unlearn", "--model", str(tiny_llama_dir), "--pool", str(record_files["pool"]),
            *texts, "--max-epochs", "1", "--method", "ga", "--batch-size", "4", "--lr", "1e-4"]
    assert main([*args, "--out", str(run)]) == 0
    assert "Check: " in capsys.readouterr().out
    check = json.loads((run / "check.json").read_text())
    assert list(check["verdicts"]["unlearned"]) == ["none", "sample", "int8", "int4"]
    assert check["data"]["nonmember"] == 3  # the calibration texts
    assert check["verdicts"]["unlearned"]["none"]["texts"] == 4
    assert check["perplexity"]["before"] > 1 and check["perplexity"]["after"] > 1
    assert check["verdict"]["state"] in ("FORGOTTEN", "NOT FORGOTTEN")
    texts[2] = "--nonmember"
    assert main(["audit", "--model", str(run), "--original", str(tiny_llama_dir), *texts,
                 "--attacks", "int4,question", "--out", str(run / "audit")]) == 0
    audited = json.loads((run / "audit" / "audit.json").read_text())
    int4 = next(x for x in audited["lines"] if x["attack"] == "int4" and x["metric"] == "el")
    assert None not in (int4["before"], int4["after"], int4["attacked"],
                        int4["original_attacked"], int4["never_seen"])
    # a second audit of the same original takes its scores from the first one
    again = ["audit", "--model", str(run), "--original", str(tiny_llama_dir), *texts,
             "--attacks", "int4", "--reuse-original", str(run / "audit")]
    assert main([*again, "--out", str(tmp_path / "again")]) == 0
    reused = json.loads((tmp_path / "again" / "audit.json").read_text())
    assert reused["results"]["original"] == {k: audited["results"]["original"][k]
                                             for k in ("none", "int4")}
    capsys.readouterr()
    assert main([*again, "--group-size", "8", "--out", str(tmp_path / "other")]) == 2
    assert "group_size differ" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    md = build_report(run)[0].read_text()
    privacy = md.split("## Privacy verdict")[1].split("## ")[0]
    assert f"Overall: {check['verdict']['state']} (from the quick check" in privacy
    assert "Not evaluated" not in md.split("## Utility before and after")[1].split("## ")[0]
    assert "## Robustness audit" in md and "| int4 | MA |" in md

    quiet = tmp_path / "quiet"
    assert main([*args, "--out", str(quiet), "--no-check"]) == 0
    assert not (quiet / "check.json").exists()
    assert "Privacy verdict\n\nNot evaluated" in build_report(quiet)[0].read_text()
