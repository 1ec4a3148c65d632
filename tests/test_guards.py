"""The inference-time baselines (unlearnlm.lm.guards): guard-prompt, icul and guard-filter, each
scored through the model interface, in `unlearnlm eval --wrap` and as bench methods.

The filter's expected values come from ``lookup_model`` (after token a it predicts a + 1), so
every greedy continuation, and so every withheld one, is worked out by hand.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from conftest import CALIBRATION_RECORDS, FORGET_RECORDS, POOL_RECORDS, write_jsonl
from test_bench import NONMEMBER_RECORDS, RETAIN_RECORDS
from test_generation import lookup_model
from unlearnlm.bench.runner import BenchSettings, run_bench
from unlearnlm.cli import main
from unlearnlm.data.texts import Record, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.composite import FilteredLM
from unlearnlm.lm.guards import (
    EXAMPLE_SEPARATOR,
    guard_filter,
    guard_instruction,
    guard_prompt,
    icul,
    icul_examples,
)
from unlearnlm.lm.interface import LM
from unlearnlm.metrics.scores import extraction_likelihood, extraction_likelihood_naive

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lookup() -> LM:
    return LM(lookup_model(), SimpleNamespace(eos_token_id=None, pad_token_id=0))


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> LM:
    return LM.load(str(tiny_llama_dir))


def _samples(texts: list[str], tokenizer, role: str = "forget"):
    records = [Record(f"{role}{i}", t) for i, t in enumerate(texts)]
    return split_records(records, tokenizer, 4, None, role=role)


class Recording(LM):
    """A plain LM that keeps every batch of token ids it scores and every prefix it continues."""

    def __init__(self, lm: LM) -> None:
        super().__init__(lm.model, lm.tokenizer)
        self.scored: list[list[int]] = []
        self.prefixes: list[list[int]] = []

    def logits(self, input_ids, attention_mask):
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            self.scored.append(row[: sum(mask)])
        return super().logits(input_ids, attention_mask)

    def generate(self, prefixes, max_new_tokens, **options):
        self.prefixes += [list(p) for p in prefixes]
        return super().generate(prefixes, max_new_tokens, **options)


# --- guard-filter ------------------------------------------------------------------------------


def test_the_filter_withholds_a_reproduced_ngram_and_passes_the_rest(lookup):
    """Blocked: [3, 4, 5, 6], n = 3, so the 3-grams (3, 4, 5) and (4, 5, 6). From [1] greedy
    runs 2, 3, 4, 5: it holds (3, 4, 5), so the refusal [0, 0] comes back. From [6]: 7, 0, 1, 2,
    nothing blocked, passed as it is. From [3, 4] one token, 5: the input's last two tokens and
    the 5 make (3, 4, 5), withheld (the refusal cut to 1 token); from [4] the same 5 makes no
    3-gram and passes."""
    guard = FilteredLM(lookup, [[3, 4, 5, 6]], n=3, refusal=[0, 0])
    assert lookup.generate([[1], [6]], 4) == [[2, 3, 4, 5], [7, 0, 1, 2]]
    assert guard.generate([[1], [6]], 4) == [[0, 0], [7, 0, 1, 2]]
    assert guard.generate([[3, 4], [4]], 1) == [[0], [5]]
    # beam search goes through the same filter
    assert guard.generate([[1]], 4, num_beams=2) == [[0, 0]]
    # teacher-forced scores pass through unchanged: the weights keep what they know
    sequences = [[1, 2, 3, 4, 5, 6], [6, 7, 0, 1]]
    for mine, theirs in zip(guard.targets(sequences), lookup.targets(sequences), strict=True):
        assert mine == theirs


def test_el_through_the_filter_is_worked_out_by_hand(lookup):
    """x = 0 1 2 5 6 7 0 1, EL_2 from start 2, blocked (4, 5, 6). Greedy from t = 2 is
    2 3 4 5 6 7 and from t = 3 is 3 4 5 6 7: both hold (4, 5, 6), withheld as [3, 3], whose
    bigram is not in the truth: overlap 0. From t = 4, 5, 6 the model continues x itself
    (6 7 0 1, ...): overlap 1 each. EL_2 = (0 + 0 + 1 + 1 + 1) / 5 = 0.6. Unfiltered, t = 2 gives
    2 of 5 bigrams in the truth, t = 3 2 of 4: (0.4 + 0.5 + 3) / 5 = 0.78. The filter's EL,
    with its own decoding of every start, equals the generate-everything reference."""
    x = [[0, 1, 2, 5, 6, 7, 0, 1]]
    guard = FilteredLM(lookup, [[4, 5, 6]], n=3, refusal=[3, 3])
    assert not guard.generation_follows_argmax
    fast = extraction_likelihood(guard, x, 2, n=2, pad_token_id=0)
    slow = extraction_likelihood_naive(guard, x, 2, n=2, pad_token_id=0)
    assert fast == pytest.approx([0.6]) and slow == pytest.approx([0.6])
    assert extraction_likelihood(lookup, x, 2, n=2, pad_token_id=0) == pytest.approx([0.78])


def test_the_filter_is_built_from_the_forget_texts(llama):
    forget = _samples(FORGET_RECORDS, llama.tokenizer)
    guard = guard_filter(llama, forget, n=4)
    assert guard.reproduces([], forget[0].input_ids[2:6])  # any 4 tokens of a forget text
    assert not guard.reproduces([], guard.refusal)
    with pytest.raises(UnlearnError, match="no blocked text has 400 tokens"):
        guard_filter(llama, forget, n=400)
    with pytest.raises(UnlearnError, match="refusal itself reproduces"):
        FilteredLM(llama, [forget[0].input_ids], 2, refusal=forget[0].input_ids[:3])


# --- guard-prompt ------------------------------------------------------------------------------


def test_the_guard_prompt_names_the_forget_texts_before_every_input(tiny_gptneo_dir):
    """The instruction names each forget text by its opening (here its 4-token prefix, under
    the 8 asked for: never past the prefix, so no private value is quoted; with the GPT-2
    tokenizer "Alice Smith was born"), and its tokens come before every scored sequence and
    every generation prefix."""
    neo = LM.load(str(tiny_gptneo_dir))
    tokenizer = neo.tokenizer
    forget = _samples(FORGET_RECORDS, tokenizer)
    text = guard_instruction(forget, tokenizer, opening_tokens=8)
    for sample in forget:
        opening = " ".join(tokenizer.decode(sample.prefix_ids).split())
        assert f'- "{opening} ..."' in text
    assert '- "Alice Smith was born ..."' in text and '- "Bob Jones lives at ..."' in text
    assert "1981" not in text and "0113" not in text and "example.com" not in text
    base = Recording(neo)
    guard = guard_prompt(base, forget, opening_tokens=8)
    assert tokenizer.decode(guard.prompt) == text
    sequences = [s.input_ids for s in forget]
    guard.targets(sequences, batch_size=2)
    assert sorted(base.scored) == sorted(guard.prompt + s for s in sequences)
    guard.generate([s.prefix_ids for s in forget], 3)
    assert base.prefixes == [guard.prompt + s.prefix_ids for s in forget]


# --- icul --------------------------------------------------------------------------------------


def test_icul_context_is_flipped_forget_examples_then_kept_texts(llama):
    """One example per forget text: its prefix, then a pool text's suffix cut to the forget
    suffix's length (never its own); then 2 kept texts whole; each followed by the separator.
    No forget suffix appears in the context."""
    tokenizer = llama.tokenizer
    forget = _samples(FORGET_RECORDS, tokenizer)
    pool = _samples(POOL_RECORDS, tokenizer, "pool")
    kept = _samples(RETAIN_RECORDS, tokenizer, "retain")
    examples = icul_examples(forget, pool, kept, examples=2, seed=0)
    assert len(examples) == len(forget) + 2
    suffixes = [p.suffix_ids for p in pool]
    for example, sample in zip(examples, forget, strict=False):
        head, tail = example[: len(sample.prefix_ids)], example[len(sample.prefix_ids) :]
        assert head == sample.prefix_ids
        assert tail != sample.suffix_ids
        assert any(tail == s[: len(sample.suffix_ids)] for s in suffixes)
    assert sorted(examples[len(forget) :]) == sorted(k.input_ids for k in kept)
    separator = tokenizer(EXAMPLE_SEPARATOR, add_special_tokens=False)["input_ids"]
    guard = icul(llama, forget, pool, kept, examples=2, seed=0)
    assert guard.prompt == [t for example in examples for t in example + separator]
    context = tokenizer.decode(guard.prompt)
    assert "0113 496 0000" not in context and "12 Station Road" not in context
    # without kept texts, the first 2 pool texts of the seeded order are shown whole
    alone = icul_examples(forget, pool, None, examples=2, seed=0)
    whole = [p.input_ids for p in pool]
    assert all(e in whole for e in alone[len(forget) :])
    assert not any(e in whole for e in alone[: len(forget)])
    assert len({tuple(map(tuple, icul_examples(forget, pool, kept, 2, seed))) for seed in
                range(4)}) > 1  # the draw follows the seed


def test_icul_refuses_forget_texts_in_its_pool_and_too_few_texts(llama):
    tokenizer = llama.tokenizer
    forget = _samples(FORGET_RECORDS, tokenizer)
    pool = _samples(POOL_RECORDS, tokenizer, "pool")
    with pytest.raises(UnlearnError, match="pool texts include a forget text"):
        icul_examples(forget, pool + forget[:1], None, examples=0)
    with pytest.raises(UnlearnError, match="needs 3 kept texts"):
        icul_examples(forget, pool, pool[:2], examples=3)


# --- unlearnlm eval --wrap ---------------------------------------------------------------------


def test_eval_wrap_guard_filter_withholds_but_leaves_the_scores(leaky_llama_dir, record_files,
                                                               tmp_path):
    """The leaky model with and without the filter, one command (--original is the same model
    unwrapped): the filter's EL and BLEU on the forget set fall (it withholds what the model
    recites), while MA and every membership AUC stay exactly the same (teacher-forced scores
    pass through)."""
    out = tmp_path / "eval"
    nonmember = write_jsonl(tmp_path / "nonmember.jsonl", NONMEMBER_RECORDS)
    code = main(["eval", "--model", str(leaky_llama_dir), "--original", str(leaky_llama_dir),
                 "--forget", str(record_files["forget"]), "--nonmember", str(nonmember),
                 "--tasks", "forget,mia", "--el-n", "3", "--prefix-tokens", "4",
                 "--suffix-tokens", "all", "--wrap", "guard-filter", "--filter-ngram", "4",
                 "--out", str(out)])
    assert code == 0
    wrapped, plain = (json.loads((out / name / "eval.json").read_text())
                      for name in ("", "original"))
    assert wrapped["settings"]["wrap"]["name"] == "guard-filter"
    assert wrapped["settings"]["wrap"]["ngram"] == 4
    assert "wrap" not in plain["settings"]
    mine, theirs = (r["tasks"]["forget"]["aggregate"] for r in (wrapped, plain))
    assert mine["ma"] == theirs["ma"]
    assert wrapped["tasks"]["mia"]["aggregate"] == plain["tasks"]["mia"]["aggregate"]
    assert theirs["el"] > 0.5 and mine["el"] < theirs["el"]
    assert mine["bleu"] < theirs["bleu"]
    assert any("[withheld]" in row["generation"] for row in wrapped["tasks"]["forget"]["samples"])


@pytest.mark.parametrize("flags, message", [
    (["--wrap", "icul"], "--wrap icul needs --icul-pool"),
    (["--wrap", "guard-prompt", "--icul-pool", "p.jsonl"], "apply to --wrap icul"),
    (["--icul-kept", "k.jsonl"], "add --wrap icul"),
    (["--wrap", "guard-filter", "--backend", "harness"], "use --backend ours"),
    (["--wrap", "nope"], "wrap must be one of guard-prompt, icul, guard-filter"),
])
def test_eval_wrap_flags_are_checked_before_anything_loads(flags, message, record_files,
                                                          tmp_path, capsys):
    code = main(["eval", "--model", "unused", "--forget", str(record_files["forget"]),
                 "--out", str(tmp_path / "eval"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "eval").exists()


def test_eval_wrap_needs_a_forget_set(tmp_path, capsys):
    code = main(["eval", "--model", "unused", "--wrap", "guard-prompt", "--tasks", "ppl_pile",
                 "--out", str(tmp_path / "eval")])
    assert code == 2 and "give --forget" in capsys.readouterr().err


# --- the bench -----------------------------------------------------------------------------


def test_bench_rows_for_the_three_baselines(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    """ga trains; guard-prompt, icul and guard-filter wrap the leaky model. Their rows carry the
    same metrics, no epochs, their cost per generated token against the plain model's, and the
    leaky model's MIA AUC as the weights'. The filter's own MIA AUC is the leaky model's too
    (it passes log-probabilities through). A re-run reuses everything."""
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    files = {name: str(write_jsonl(tmp_path / f"{name}.jsonl", texts)) for name, texts in [
        ("forget", FORGET_RECORDS), ("retain", RETAIN_RECORDS), ("pool", POOL_RECORDS),
        ("calibration", CALIBRATION_RECORDS), ("nonmember", NONMEMBER_RECORDS)]}
    methods = ["ga", "guard-prompt", "icul", "guard-filter"]
    settings = BenchSettings(
        model=str(tiny_llama_dir), forget_set=files["forget"], retain=files["retain"],
        pool=files["pool"], calibration=files["calibration"], nonmember=files["nonmember"],
        out=str(tmp_path / "bench"), methods=",".join(methods), tasks=["forget", "mia"],
        limit=2, prefix_tokens=4, suffix_tokens=None, lr=3e-3, max_epochs=1, batch_size=2,
        finetune_lr=3e-3, finetune_epochs=40, finetune_target=0.9, icul_examples=2,
        filter_ngram=4)
    results = run_bench(settings)
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["leaky", "retain", *methods]
    leaky = rows["leaky"]
    for name in methods[1:]:
        row = rows[name]
        assert row["role"] == "guard" and row["epochs"] is None
        assert row["ms_per_token"] > 0 and row["plain_ms_per_token"] > 0
        assert row["cost_ratio"] == pytest.approx(row["ms_per_token"] / row["plain_ms_per_token"])
        assert row["weights_mia_auc"] == leaky["mia_auc"]
        assert row["el10"] is not None and row["ma"] is not None
    assert rows["ga"]["weights_mia_auc"] == rows["ga"]["mia_auc"]
    assert rows["guard-filter"]["mia_auc"] == leaky["mia_auc"]
    assert rows["guard-filter"]["ma"] == leaky["ma"]
    assert rows["guard-prompt"]["prompt_tokens"] > 0 and rows["icul"]["prompt_tokens"] > 0
    assert 0.0 <= rows["guard-filter"]["withheld_forget"] <= 1.0
    out = tmp_path / "bench"
    with open(out / "results.csv", encoding="utf-8", newline="") as handle:
        saved = {r["name"]: r for r in csv.DictReader(handle)}
    assert float(saved["icul"]["cost_ratio"]) > 0 and saved["icul"]["epochs"] == ""
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| weights MIA | gen ms/token | x plain |" in markdown
    assert "- icul: no training (an inference-time baseline)" in markdown
    assert not (out / "methods" / "icul" / "model.safetensors").exists()
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("methods/*/guard.json"),
                                                *out.glob("eval/*/eval.json")]}
    assert len(stamps) == 3 + 2 + len(methods)
    run_bench(settings)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_bench_accepts_the_baselines_by_name_and_checks_icul_texts(tmp_path):
    """The names are bench methods; icul's kept examples come from the retain texts, so too few
    of them stop the bench before anything is trained or written."""
    assert BenchSettings(methods="guard-prompt,icul,guard-filter").trained_methods == []
    assert BenchSettings(methods="ga,icul").trained_methods == ["ga"]
    with pytest.raises(UnlearnError, match="known methods: .*guard-prompt, icul, guard-filter"):
        BenchSettings(methods="icul,guard")
    files = {name: str(write_jsonl(tmp_path / f"{name}.jsonl", texts)) for name, texts in [
        ("forget", FORGET_RECORDS), ("retain", RETAIN_RECORDS), ("pool", POOL_RECORDS),
        ("calibration", CALIBRATION_RECORDS), ("nonmember", NONMEMBER_RECORDS)]}
    settings = BenchSettings(
        model="unused", forget_set=files["forget"], retain=files["retain"], pool=files["pool"],
        calibration=files["calibration"], nonmember=files["nonmember"],
        out=str(tmp_path / "bench"), methods="icul", icul_examples=3)
    with pytest.raises(UnlearnError, match="icul shows 3 retain texts whole, and there are 2"):
        run_bench(settings)
    assert not (tmp_path / "bench").exists()


def test_the_docs_quote_the_guard_prompt_as_the_code_writes_it():
    from pathlib import Path

    from unlearnlm.lm.guards import GUARD_FOOTER, GUARD_HEADER, REFUSAL

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert GUARD_HEADER.strip() in text and GUARD_FOOTER.strip() in text
    assert f'`"{REFUSAL}"`' in text
