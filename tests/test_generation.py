"""Tests for unlearnlm.lm.generation: batched greedy/beam generation from token-id prefixes.

Expected values come from ``lookup_model``, a real 1-layer Llama whose weights are set so that the
next-token logits depend only on the current token (logit ln 7 for ``table[a]``, 0 for the other
7 tokens), so every greedy step can be worked out by hand. ``tests/test_metrics.py`` uses it too.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from unlearnlm.errors import UnlearnError
from unlearnlm.lm.generation import generate_continuations

VOCAB = 8
NEXT = [(a + 1) % VOCAB for a in range(VOCAB)]  # after token a the lookup model predicts a + 1


def lookup_model(table: list[int] = NEXT, margin: float = math.log(7)) -> LlamaForCausalLM:
    """A Llama with logits[b] = margin if b == table[a] else 0, where a is the current token.

    The block's output projections are zero, so the residual stream is the one-hot embedding;
    the final RMSNorm (weight 1/sqrt(V)) keeps it one-hot and lm_head[b, a] holds the table.
    With V = 8 and margin ln 7, P(table[a] | a) = 7 / (7 + 7) = 1/2 and any other token 1/14.
    """
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=VOCAB, intermediate_size=4, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64,
        rms_norm_eps=1e-12, tie_word_embeddings=False, bos_token_id=0, eos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(VOCAB))
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1 / math.sqrt(VOCAB))
        model.lm_head.weight.zero_()
        for current, following in enumerate(table):
            model.lm_head.weight[following, current] = margin
    return model.eval()


def _greedy_one_by_one(model, prefixes, max_new_tokens, pad_token_id, num_beams=1):
    return [
        generate_continuations(
            model, [p], max_new_tokens, pad_token_id=pad_token_id, num_beams=num_beams
        )[0]
        for p in prefixes
    ]


def _mixed_prefixes(vocab: range, lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(n)] for n in lengths]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_greedy_follows_the_table_in_input_order():
    """Lookup model, greedy, 3 new tokens; prefixes of lengths 2, 1, 4 (sorted inside as 1, 2, 4).

    [1, 2] ends in 2 -> 3, 4, 5.  [7] -> 0, 1, 2.  [3, 4, 5, 6] ends in 6 -> 7, 0, 1.
    """
    out = generate_continuations(
        lookup_model(), [[1, 2], [7], [3, 4, 5, 6]], 3, pad_token_id=0, batch_size=2
    )
    assert out == [[3, 4, 5], [0, 1, 2], [7, 0, 1]]


def test_continuation_ends_before_the_first_eos():
    """eos = 4, 5 new tokens at most.

    [1] -> 2, 3, 4, ... : cut before the 4 -> [2, 3].  [3] -> 4 first -> [].
    [5] -> 6, 7, 0, 1, 2 never meets 4 -> all five.
    """
    out = generate_continuations(lookup_model(), [[1], [3], [5]], 5, pad_token_id=0, eos_token_id=4)
    assert out == [[2, 3], [], [6, 7, 0, 1, 2]]


def test_no_eos_means_full_length_and_saved_sampling_settings_are_ignored():
    """The model's own generation_config says: sample at temperature 5, stop at token 4,
    penalise repeats. Asked for plain greedy with eos_token_id=None, [1] must still give exactly
    2, 3, 4, 5, 6, 7 (6 tokens, through the 4) on every call."""
    model = lookup_model()
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=5.0, top_k=3, eos_token_id=4, repetition_penalty=3.0
    )
    for _ in range(3):
        assert generate_continuations(model, [[1]], 6, pad_token_id=0) == [[2, 3, 4, 5, 6, 7]]


def test_beam_search_on_the_lookup_model_is_greedy():
    """Every step has one token at P = 1/2 and the rest at 1/14, so the best beam is the greedy
    path: [6] -> 7, 0, 1 with 3 beams too."""
    out = generate_continuations(lookup_model(), [[6], [2, 3]], 3, pad_token_id=0, num_beams=3)
    assert out == [[7, 0, 1], [4, 5, 6]]


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gptneo"])
def test_batched_greedy_equals_one_at_a_time(which, request):
    """Left padding must not change the result: 7 prefixes of lengths 1..12 in batches of 3
    (so each batch pads) give the same 8 greedy tokens as 7 unpadded single calls."""
    model = request.getfixturevalue(which)
    vocab = range(3, model.config.vocab_size)
    prefixes = _mixed_prefixes(vocab, [5, 1, 12, 3, 9, 2, 7], seed=1)
    pad = 0
    batched = generate_continuations(model, prefixes, 8, pad_token_id=pad, batch_size=3)
    assert batched == _greedy_one_by_one(model, prefixes, 8, pad)
    assert all(len(c) == 8 for c in batched)


def test_batched_beam_search_equals_one_at_a_time(tiny_llama):
    """Same check for beam search (2 beams) on the tiny Llama."""
    prefixes = _mixed_prefixes(range(3, 300), [4, 1, 10, 6], seed=2)
    batched = generate_continuations(
        tiny_llama, prefixes, 6, pad_token_id=2, num_beams=2, batch_size=4
    )
    assert batched == _greedy_one_by_one(tiny_llama, prefixes, 6, pad_token_id=2, num_beams=2)


def test_training_mode_is_restored():
    model = lookup_model().train()
    generate_continuations(model, [[1]], 2, pad_token_id=0)
    assert model.training
    model.eval()
    generate_continuations(model, [[1]], 2, pad_token_id=0)
    assert not model.training


def test_zero_new_tokens_and_bad_input():
    model = lookup_model()
    assert generate_continuations(model, [[1], [2, 3]], 0, pad_token_id=0) == [[], []]
    assert generate_continuations(model, [], 4, pad_token_id=0) == []
    with pytest.raises(UnlearnError, match="prefix 1 is empty"):
        generate_continuations(model, [[1], []], 3, pad_token_id=0)
    with pytest.raises(UnlearnError, match="num_beams"):
        generate_continuations(model, [[1]], 3, pad_token_id=0, num_beams=0)
