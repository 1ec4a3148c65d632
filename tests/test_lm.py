"""The model interface (unlearnlm.lm): a plain, a prompted, an ensemble and a LoRA-adapted model
scored by the same code, generation of every kind, and the one save path.

Each expected value follows from the construction: a prompt only shifts positions, an ensemble of
a model with itself is that model, a LoRA adapter with B = 0 adds nothing.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import FORGET_RECORDS
from test_generation import lookup_model
from unlearnlm.data.texts import Record, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate.suite import evaluate
from unlearnlm.lm.composite import EnsembleLM, PromptedLM
from unlearnlm.lm.interface import LM, as_lm
from unlearnlm.lm.lora import with_lora
from unlearnlm.lm.stepwise import stepwise_generate
from unlearnlm.metrics.scores import extraction_likelihood, memorization_accuracy, sequence_nll

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> LM:
    return LM.load(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def neo(tiny_gptneo_dir) -> LM:
    return LM.load(str(tiny_gptneo_dir))


@pytest.fixture(scope="module")
def other_llama(tiny_llama_dir) -> LM:
    """The tiny Llama with different random weights, same tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return LM(model.eval(), AutoTokenizer.from_pretrained(tiny_llama_dir))


def _sequences(lm: LM) -> list[list[int]]:
    encoded = lm.tokenizer(FORGET_RECORDS, add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in encoded]


def _flat(rows) -> torch.Tensor:
    return torch.tensor([value for row in rows for value in row.logprobs])


# --- the plain model -------------------------------------------------------------------------


def test_target_logprobs_match_a_hand_written_forward_pass(llama):
    """One sequence alone, no padding: log_softmax of the model's logits at t - 1, gathered at
    x_t, for t = 3..T-1; the batched call (with shorter, padded neighbours) gives the same."""
    sequences = _sequences(llama)
    tokens = torch.tensor([sequences[1]])
    with torch.no_grad():
        logits = llama.model(input_ids=tokens).logits[0]
    expected = torch.log_softmax(logits[2:-1], -1).gather(-1, tokens[0, 3:, None]).squeeze(-1)
    rows = llama.targets(sequences, [3] * len(sequences), batch_size=4)
    assert torch.allclose(torch.tensor(rows[1].logprobs), expected, atol=1e-5)
    assert rows[1].predicted == logits[2:-1].argmax(-1).tolist()
    assert len(rows[0].logprobs) == len(sequences[0]) - 3


def test_summed_nll_is_the_float32_sum_of_each_padded_row(llama):
    """Per sequence, -sum log P(x_t | x_<t) over t >= 1, summed in float32 like the published
    perplexity code: equal to the per-token log-probabilities within float32 rounding, and
    exactly the float32 sum of one sequence scored alone."""
    sequences = _sequences(llama)
    sums = llama.summed_nll(sequences, batch_size=3)
    by_token = [-sum(row.logprobs) for row in llama.targets(sequences, 1, batch_size=3)]
    assert sums == pytest.approx(by_token, rel=1e-5)
    tokens = torch.tensor([sequences[2]])
    with torch.no_grad():
        logits = llama.model(input_ids=tokens).logits[0]
    alone = torch.nn.functional.cross_entropy(logits[:-1].float(), tokens[0, 1:], reduction="none")
    assert sums[2] == pytest.approx(alone.sum().item(), rel=1e-6)
    assert len(sums) == len(sequences) and all(s > 0 for s in sums)


def test_starts_are_checked(llama):
    with pytest.raises(UnlearnError, match="starts >= 1"):
        llama.targets([[1, 2, 3]], 0)
    with pytest.raises(UnlearnError, match="2 starts for 1 sequences"):
        llama.targets([[1, 2, 3]], [1, 2])


def test_as_lm_wraps_once(llama):
    assert as_lm(llama) is llama
    wrapped = as_lm(llama.model, llama.tokenizer)
    assert isinstance(wrapped, LM) and wrapped.pad_token_id == llama.tokenizer.pad_token_id


def test_next_logprobs_are_the_last_position_of_each_sequence(llama):
    """Sequences of different lengths in one batch: row i is log P(. | whole sequence i)."""
    sequences = _sequences(llama)[:3]
    got = llama.next_logprobs(sequences)
    for row, tokens in enumerate(sequences):
        with torch.no_grad():
            logits = llama.model(input_ids=torch.tensor([tokens])).logits[0, -1]
        assert torch.allclose(got[row], torch.log_softmax(logits, -1), atol=1e-5)


# --- a prompted model -------------------------------------------------------------------------


def test_prompted_target_logprobs_are_the_base_models_after_the_prompt(llama):
    """prompt P + x: the prompted model's log P(x_t | x_<t) is the plain model's
    log P(x_t | P, x_<t), i.e. its scores of prompt + x from start len(P) + t."""
    prompt = "Do not reveal personal data.\n"
    prompted = PromptedLM(llama, prompt)
    size = len(prompted.prompt)
    sequences = _sequences(llama)
    mine = prompted.targets(sequences, 1, batch_size=3)
    theirs = llama.targets([prompted.prompt + s for s in sequences], size + 1, batch_size=3)
    assert torch.allclose(_flat(mine), _flat(theirs), atol=1e-5)
    assert [r.predicted for r in mine] == [r.predicted for r in theirs]
    # and the prompt changes what the model predicts (a check that it is really there)
    plain = llama.targets(sequences, 1, batch_size=3)
    assert not torch.allclose(_flat(mine), _flat(plain), atol=1e-3)


def test_prompted_generation_continues_the_input_after_the_prompt(llama):
    prompted = PromptedLM.with_examples(llama, ["Alice lives in Leeds."], instruction="Facts:")
    assert prompted.tokenizer.decode(prompted.prompt) == "Facts:\n\nAlice lives in Leeds.\n\n"
    prefixes = [s[:4] for s in _sequences(llama)]
    got = prompted.generate(prefixes, 5)
    assert got == llama.generate([prompted.prompt + p for p in prefixes], 5)


def test_prompted_el_uses_the_sequences_caches_and_equals_re_reading(llama):
    """EL through the prompted model: the decoder that starts from each sequence's own cache
    (after the prompt's) gives the same continuations as generating from prompt + prefix."""
    prompted = PromptedLM(llama, "Bob Jones lives at 12 Station Road.")
    sequences = _sequences(llama)
    predictions = prompted.next_token_argmax(sequences)
    jobs = [(i, t) for i, s in enumerate(sequences) for t in (2, len(s) - 3)]
    cached = prompted.greedy_to_the_end(sequences, predictions, jobs, batch_size=4)
    for i, t in jobs:
        [expected] = prompted.generate([sequences[i][:t]], len(sequences[i]) - t)
        assert cached[(i, t)] == expected


# --- the prompt's cache ---------------------------------------------------------------------------

PROMPT_TOKENS = 40  # longer than every input below, so a pass that reads the prompt stands out


def _windowed_neo() -> LM:
    """A tiny GPT-Neo whose second layer attends to the last 8 cache positions only: a prompt
    cache that put padding between prompt and input would change what that layer sees."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(3)
    config = GPTNeoConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2,
                          attention_types=[[["global", "local"], 1]], window_size=8,
                          max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    return LM(GPTNeoForCausalLM(config).eval(), None, pad_token_id=0)


@pytest.fixture(scope="module", params=["llama", "windowed-neo"])
def base_and_inputs(request, tiny_llama_dir):
    """A base model, a 40-token prompt and inputs of 3 to 13 tokens (padding in every batch)."""
    lm = LM.load(str(tiny_llama_dir)) if request.param == "llama" else _windowed_neo()
    draw = torch.Generator().manual_seed(7)
    prompt = torch.randint(3, 290, (PROMPT_TOKENS,), generator=draw).tolist()
    inputs = [torch.randint(3, 290, (n,), generator=draw).tolist() for n in (5, 13, 3, 9, 7)]
    return lm, prompt, inputs


def test_cached_prompt_scores_equal_re_reading_the_prompt(base_and_inputs):
    """Right-padded batches of inputs of different lengths: the logits read after the prompt's
    cache equal those of prompt + input read whole, at every real position."""
    lm, prompt, inputs = base_and_inputs
    fast, slow = PromptedLM(lm, prompt), PromptedLM(lm, prompt, cache_prompt=False)
    ids = torch.zeros(len(inputs), 13, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(inputs):
        ids[row, : len(tokens)], mask[row, : len(tokens)] = torch.tensor(tokens), 1
    with fast.evaluating():
        got, expected = fast.logits(ids, mask), slow.logits(ids, mask)
    assert fast.prompt_cache_builds == 1 and slow.prompt_cache_builds == 0
    assert got.shape == expected.shape == (len(inputs), 13, 300 if lm.tokenizer is None
                                           else lm.model.config.vocab_size)
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5)
    mine, theirs = fast.targets(inputs, 1, batch_size=2), slow.targets(inputs, 1, batch_size=2)
    assert torch.allclose(_flat(mine), _flat(theirs), atol=1e-5)


def test_cached_prompt_generation_equals_re_reading_the_prompt(base_and_inputs):
    """Greedy (with and without an eos that stops some rows early), sampled with a seed, and
    beam search (which re-reads the prompt): the same tokens either way, batches of 2 with
    left padding."""
    lm, prompt, inputs = base_and_inputs
    fast, slow = PromptedLM(lm, prompt), PromptedLM(lm, prompt, cache_prompt=False)
    greedy = slow.generate(inputs, 8, batch_size=2)
    assert fast.generate(inputs, 8, batch_size=2) == greedy
    assert greedy == lm.generate([prompt + p for p in inputs], 8, batch_size=2)
    eos = greedy[1][2]  # the third token of one row: that row stops after two tokens
    stopped = fast.generate(inputs, 8, eos_token_id=eos, batch_size=2)
    assert stopped == slow.generate(inputs, 8, eos_token_id=eos, batch_size=2)
    assert len(stopped[1]) <= 2 and eos not in sum(stopped, [])
    options = dict(temperature=0.7, seed=11, batch_size=2)
    sampled = fast.generate(inputs, 8, **options)
    assert sampled == slow.generate(inputs, 8, **options)
    assert sampled != greedy and sampled != fast.generate(inputs, 8, **{**options, "seed": 12})
    beams = fast.generate(inputs[:2], 4, num_beams=2)
    assert beams == slow.generate(inputs[:2], 4, num_beams=2)
    assert fast.generate(inputs, 0) == [[] for _ in inputs]


def test_cached_prompt_el_continuations_equal_re_reading_the_prompt(base_and_inputs):
    lm, prompt, inputs = base_and_inputs
    fast, slow = PromptedLM(lm, prompt), PromptedLM(lm, prompt, cache_prompt=False)
    predictions = slow.next_token_argmax(inputs)
    assert fast.next_token_argmax(inputs) == predictions
    jobs = [(i, t) for i, s in enumerate(inputs) for t in range(1, len(s))]
    got = fast.greedy_to_the_end(inputs, predictions, jobs, batch_size=3)
    assert got == slow.greedy_to_the_end(inputs, predictions, jobs, batch_size=3)
    assert all(len(got[(i, t)]) == len(inputs[i]) - t for i, t in jobs)


def test_the_prompt_is_read_once_and_again_when_the_weights_change(tiny_llama_dir):
    """A hook counts forward passes that read at least the prompt's 40 tokens: one for scores,
    generation and EL together; an in-place weight change (what an optimiser step does) reads
    it again, and the scores follow the new weights."""
    lm = LM.load(str(tiny_llama_dir))
    draw = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, 290, (PROMPT_TOKENS,), generator=draw).tolist()
    inputs = [torch.randint(3, 290, (n,), generator=draw).tolist() for n in (6, 10, 4)]
    lengths: list[int] = []
    lm.model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    prompted = PromptedLM(lm, prompt)
    first = prompted.targets(inputs, 1, batch_size=2)
    prompted.generate(inputs, 5, batch_size=2)
    predictions = prompted.next_token_argmax(inputs)
    prompted.greedy_to_the_end(inputs, predictions, [(0, 2), (1, 5)], batch_size=2)
    cache = prompted.prompt_cache()
    assert prompted.prompt_cache() is cache
    assert prompted.prompt_cache_builds == 1
    assert [n for n in lengths if n >= PROMPT_TOKENS] == [PROMPT_TOKENS]
    assert len(lengths) > 5  # the other passes ran, on the inputs alone
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(1.5)
    second = prompted.targets(inputs, 1, batch_size=2)
    assert prompted.prompt_cache_builds == 2 and prompted.prompt_cache() is not cache
    again = PromptedLM(lm, prompt, cache_prompt=False).targets(inputs, 1, batch_size=2)
    assert torch.allclose(_flat(second), _flat(again), atol=1e-5)
    assert not torch.allclose(_flat(second), _flat(first), atol=1e-3)
    prompted.clear_prompt_cache()
    prompted.targets(inputs[:1], 1)
    assert prompted.prompt_cache_builds == 3


def test_a_training_pass_or_a_composite_base_re_reads_the_prompt(llama):
    """With autograd on, the prompt is read again (gradients reach it); a prompted prompted
    model is not a plain model, so it re-reads both prompts and scores them in order."""
    prompted = PromptedLM(llama, "Keep it private.")
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    with torch.enable_grad():
        assert prompted.logits(ids, mask).requires_grad
    assert prompted.prompt_cache_builds == 0
    outer = PromptedLM(prompted, [9, 10, 11])
    sequences = _sequences(llama)[:2]
    got = outer.targets(sequences, 1)
    assert outer.prompt_cache() is None and outer.prompt_cache_builds == 0
    expected = llama.targets([prompted.prompt + [9, 10, 11] + s for s in sequences],
                             len(prompted.prompt) + 4)
    assert torch.allclose(_flat(got), _flat(expected), atol=1e-5)


def test_suffix_generations_are_as_long_as_the_suffix_and_end_at_eos():
    """Lookup model (after a comes a + 1), eos = 4: from [1] with a 5-token suffix the greedy
    run is 2, 3, then eos: [2, 3]. From [5] with a 2-token suffix: 6, 7 (cut at 2 tokens).
    The drop test and the evaluation use this one generation."""
    from types import SimpleNamespace

    from unlearnlm.data.texts import Sample

    lm = LM(lookup_model(), SimpleNamespace(eos_token_id=4, pad_token_id=0))
    samples = [Sample("a", "", [1], [2, 3, 4, 5, 6]), Sample("b", "", [5], [0, 0])]
    assert lm.generate_suffixes(samples) == [[2, 3], [6, 7]]
    assert lm.generate_suffixes(samples, num_beams=2) == [[2, 3], [6, 7]]
    assert lm.generate_suffixes([]) == []


def test_prompt_must_not_be_empty(llama):
    with pytest.raises(UnlearnError, match="prompt is empty"):
        PromptedLM(llama, [])
    with pytest.raises(UnlearnError, match="no single set of weights"):
        PromptedLM(llama, "x").save("unused")


# --- an ensemble ---------------------------------------------------------------------------------


def test_an_ensemble_of_a_model_with_itself_is_the_model(llama):
    """log (1/2 (p + p)) = log p: same target log-probs, argmax, generation and metrics."""
    twice = EnsembleLM([llama, llama])
    sequences = _sequences(llama)
    assert torch.allclose(_flat(twice.targets(sequences)), _flat(llama.targets(sequences)),
                          atol=1e-5)
    assert memorization_accuracy(twice, sequences) == memorization_accuracy(llama.model,
                                                                             sequences)
    prefixes = [s[:3] for s in sequences]
    assert twice.generate(prefixes, 6) == llama.generate(prefixes, 6)


def test_an_ensemble_averages_probabilities(llama, other_llama):
    """Two different models: exp of the ensemble's log-prob is the mean of the two probabilities,
    position by position."""
    pair = EnsembleLM([llama, other_llama])
    sequences = _sequences(llama)
    mean = (_flat(llama.targets(sequences)).exp() + _flat(other_llama.targets(sequences)).exp()) / 2
    assert torch.allclose(_flat(pair.targets(sequences)).exp(), mean, atol=1e-6)


def test_ensemble_decoding_with_caches_equals_rereading_every_sequence(llama, other_llama,
                                                                       neo):
    """Greedy decoding that keeps each member's key/value cache (prefixes of different lengths,
    so rows are left-padded) gives the tokens of the decoder that re-reads every whole sequence;
    an eos ends a row there; a sampled run is reproducible from its seed. GPT-Neo too (its own
    position handling)."""
    from unlearnlm.lm.stepwise import stepwise_generate

    for members in ([llama, other_llama], [neo, neo]):
        pair = EnsembleLM(members)
        prefixes = [s[: 2 + i] for i, s in enumerate(_sequences(members[0]))]
        cached = pair.generate(prefixes, 10, batch_size=3)
        assert cached == stepwise_generate(pair.next_logprobs, prefixes, 10)
        assert all(len(tokens) == 10 for tokens in cached)
        eos = cached[0][4]
        stopped = pair.generate(prefixes, 10, eos_token_id=eos)
        assert stopped == stepwise_generate(pair.next_logprobs, prefixes, 10, eos_token_id=eos)
        assert stopped[0] == cached[0][: cached[0].index(eos)]
        sampled = pair.generate(prefixes, 6, temperature=1.0, seed=3)
        assert sampled == pair.generate(prefixes, 6, temperature=1.0, seed=3)


def test_ensemble_el_equals_the_naive_definition(llama, other_llama):
    """EL through the ensemble (shortcut + step-by-step decoding) equals the generate-everything
    reference run on the same ensemble."""
    from unlearnlm.metrics.scores import extraction_likelihood_naive

    pair = EnsembleLM([llama, other_llama])
    sequences = [s[:12] for s in _sequences(llama)]
    fast = extraction_likelihood(pair, sequences, 4, n=2, pad_token_id=pair.pad_token_id)
    slow = extraction_likelihood_naive(pair, sequences, 4, n=2, pad_token_id=pair.pad_token_id)
    assert fast == pytest.approx(slow)


def test_ensemble_members_must_share_a_vocabulary(llama, neo):
    with pytest.raises(UnlearnError, match="vocabularies of sizes"):
        EnsembleLM([llama, neo]).targets([[1, 2, 3]])
    with pytest.raises(UnlearnError, match="at least one model"):
        EnsembleLM([])


# --- the evaluation suite on a prompted and an ensemble model ----------------------------------


@pytest.mark.parametrize("kind", ["prompted", "ensemble"])
def test_evaluation_suite_scores_composite_models(kind, llama, other_llama):
    """evaluate() on the forget set with the forget and mia tasks: the same code path as a plain
    model, values in range, and the ensemble's loss (mean NLL) at most the mean of its members'
    (log is concave: -log mean p <= mean -log p, per token)."""
    tokenizer = llama.tokenizer
    records = [Record(str(i), t) for i, t in enumerate(FORGET_RECORDS)]
    forget = split_records(records[:3], tokenizer, 4, None)
    nonmember = split_records(records[3:], tokenizer, 4, None)
    model = (PromptedLM(llama, "Keep private facts private.\n") if kind == "prompted"
             else EnsembleLM([llama, other_llama]))
    result = evaluate(model, tokenizer, forget=forget, nonmember=nonmember,
                      tasks=["forget", "mia"], limit=None, el_n=2)
    section = result["tasks"]["forget"]
    assert section["aggregate"]["n"] == 3
    for name in ("el", "ma", "bleu", "bertscore"):
        assert 0.0 <= section["aggregate"][name] <= 1.0
    assert set(result["tasks"]["mia"]["aggregate"]) == {"loss", "zlib", "min_k",
                                                        "min_k_plus_plus"}
    assert result["tasks"]["verdict"]["aggregate"]["share_forgotten"] in (0.0, 1 / 3, 2 / 3, 1.0)
    losses = [row["loss"] for row in result["tasks"]["mia"]["samples"]["members"]]
    sequences = [s.input_ids for s in forget]
    if kind == "ensemble":
        members = [sequence_nll(m, sequences) for m in (llama, other_llama)]
        for loss, a, b in zip(losses, *members, strict=True):
            assert loss <= (a + b) / 2 + 1e-6
    else:
        assert losses == pytest.approx(sequence_nll(model, sequences), abs=1e-6)


def test_the_harness_backend_refuses_a_composite_model(llama):
    with pytest.raises(UnlearnError, match="not one Hugging Face model"):
        EnsembleLM([llama]).hf_model()


# --- a LoRA-adapted model -----------------------------------------------------------------------


def test_lora_with_zero_b_is_the_base_model_and_saves_merged(tiny_llama_dir, tmp_path):
    """peft starts B at zero: W + BA = W, so every score is the base model's. With B set to
    random values the scores change, and the save (adapters merged) loads as a plain model with
    exactly the adapted model's scores."""
    base = LM.load(str(tiny_llama_dir))
    sequences = _sequences(base)
    before = _flat(base.targets(sequences))
    adapted = with_lora(LM.load(str(tiny_llama_dir)), rank=4, alpha=8)
    assert torch.allclose(_flat(adapted.targets(sequences)), before, atol=1e-6)
    with torch.no_grad():
        for name, parameter in adapted.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    changed = _flat(adapted.targets(sequences))
    assert not torch.allclose(changed, before, atol=1e-3)
    out = adapted.save(tmp_path / "merged", {"run.json": {"lora": True}})
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "run.json").read_text()) == {"lora": True}
    reloaded = LM.load(str(out))
    assert torch.allclose(_flat(reloaded.targets(sequences)), changed, atol=1e-5)
    assert any("lora_A" in n for n, _ in adapted.model.named_parameters())  # left adapted


def test_lora_settings_are_checked(llama):
    with pytest.raises(UnlearnError, match="rank is 0"):
        with_lora(llama, rank=0)


# --- saving ---------------------------------------------------------------------------------------


def test_saving_a_gguf_loaded_model_strips_its_quantization_config(tiny_llama_dir, tmp_path):
    """A model loaded from GGUF carries quantization_config and an hf_quantizer; both go, so the
    save loads as the float model it is."""
    lm = LM.load(str(tiny_llama_dir))
    lm.model.config.quantization_config = {"quant_method": "gguf"}
    lm.model.hf_quantizer = object()
    out = lm.save(tmp_path / "saved")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert lm.model.hf_quantizer is None
    assert torch.allclose(_flat(LM.load(str(out)).targets(_sequences(lm))),
                          _flat(lm.targets(_sequences(lm))))


# --- step-by-step decoding on a hand-made model --------------------------------------------------


class BigramLM(LM):
    """Next-token log-probs from a table indexed by the last token only (V = 4)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(torch.nn.Linear(1, 1), pad_token_id=0)
        self.table = table.log()

    def logits(self, input_ids, attention_mask):
        return self.table[input_ids]


# after 0: 1 (0.6) or 2 (0.4); after 1: 0.34 / 0.33 / 0.33 over 1..3; after 2: 3 (0.9)
TABLE = torch.tensor([[0.0, 0.6, 0.4, 0.0], [0.0, 0.34, 0.33, 0.33],
                      [0.0, 0.05, 0.05, 0.9], [0.25, 0.25, 0.25, 0.25]]) + 1e-9


def test_beam_search_finds_the_path_greedy_misses():
    """From [0], 2 tokens: greedy takes 1 (0.6) then 1 (0.34): 0.204. Beam search with 2 beams
    also keeps 2 (0.4) and then takes 3 (0.9): 0.36, the better path. With 3 as eos, that path
    ends there, the eos dropped: [2]."""
    lm = BigramLM(TABLE)
    assert stepwise_generate(lm.next_logprobs, [[0]], 2) == [[1, 1]]
    assert stepwise_generate(lm.next_logprobs, [[0]], 2, num_beams=2) == [[2, 3]]
    assert stepwise_generate(lm.next_logprobs, [[0]], 2, eos_token_id=3, num_beams=2) == [[2]]


def test_sampling_is_seeded_and_follows_the_distribution():
    """1000 draws after [0]: token 1 about 60 % of the time (binomial sd 1.5 %); the same seed
    gives the same draws; a tiny temperature makes sampling greedy."""
    lm = BigramLM(TABLE)
    draws = stepwise_generate(lm.next_logprobs, [[0]] * 1000, 1, temperature=1.0, seed=3)
    share = sum(d == [1] for d in draws) / 1000
    assert abs(share - 0.6) < 0.06
    assert draws == stepwise_generate(lm.next_logprobs, [[0]] * 1000, 1, temperature=1.0, seed=3)
    cold = stepwise_generate(lm.next_logprobs, [[0]] * 20, 1, temperature=1e-3, seed=4)
    assert cold == [[1]] * 20


def test_sampling_a_plain_model_is_seeded_and_leaves_the_global_state():
    """HF sampling through LM.generate: reproducible by seed, and torch's global random state
    is the same after as before."""
    lm = LM(lookup_model(), pad_token_id=0)
    state = torch.random.get_rng_state()
    first = lm.generate([[1], [5]] * 4, 6, temperature=1.0, seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == lm.generate([[1], [5]] * 4, 6, temperature=1.0, seed=11)
    assert len({tuple(row) for row in first}) > 2  # P(next) = 1/2: the draws differ
    with pytest.raises(UnlearnError, match="temperature or beams"):
        lm.generate([[1]], 2, temperature=1.0, num_beams=2)
    assert math.isclose(lm.context_limit(), 64)
