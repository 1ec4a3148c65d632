"""Loss terms: values derived by hand, and the direction each one moves the model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unlearnlm.losses import (
    LOSS_TERMS,
    METHODS,
    combined_loss,
    forget_ga,
    kl_to_reference,
    nll,
    npo,
    token_logprobs,
)


def test_nll_matches_hand_computation():
    """Vocabulary of 2, one sequence [0, 1, 1], logits at every position (0, log 3):
    P(token 1) = 3/4, P(token 0) = 1/4. Targets are tokens 1 and 2 (both = 1), so
    NLL = -log(3/4) = 0.28768. With the mask hiding position 2 it is the same single term;
    forget_ga is its negative."""
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    ids = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[0, 1, 1]])
    assert nll(logits, ids, mask).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert forget_ga(logits, ids, mask).item() == pytest.approx(math.log(0.75), abs=1e-6)
    only_first = torch.tensor([[0, 1, 0]])
    assert nll(logits, ids, only_first).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_nll_ignores_masked_positions():
    """Target 1 has P = 3/4, target 2 (token 0) has P = 1/4: with both, NLL is the mean
    (-log 3/4 - log 1/4) / 2 = 0.83698; masking target 2 leaves -log 3/4."""
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    ids = torch.tensor([[0, 1, 0]])
    both = nll(logits, ids, torch.tensor([[0, 1, 1]])).item()
    first = nll(logits, ids, torch.tensor([[0, 1, 0]])).item()
    assert both == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, abs=1e-6)
    assert first == pytest.approx(-math.log(0.75), abs=1e-6)


def test_kl_zero_for_identical_and_hand_value_otherwise():
    """KL(p || q) with p = (1/2, 1/2) and q = (3/4, 1/4):
    1/2 log(2/3) + 1/2 log(2) = 0.5 * log(4/3) = 0.143841."""
    ref = torch.zeros(1, 2, 2)
    policy = torch.tensor([[[math.log(3.0), 0.0]] * 2])
    mask = torch.tensor([[0, 1]])
    assert kl_to_reference(ref, ref, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_to_reference(policy, ref, mask).item() == pytest.approx(
        0.5 * math.log(4.0 / 3.0), abs=1e-6
    )


def test_npo_at_reference_equals_two_over_beta_log_two():
    """With P_theta = P_theta0 the log-ratio is 0 and -(2/beta) log sigmoid(0) = (2/beta) log 2."""
    logits = torch.randn(2, 4, 5)
    ids = torch.randint(0, 5, (2, 4))
    mask = torch.ones(2, 4, dtype=torch.long)
    assert npo(logits, logits, ids, mask, beta=0.1).item() == pytest.approx(
        20 * math.log(2.0), rel=1e-5
    )


def test_token_logprobs_shape_and_values():
    logits = torch.randn(3, 5, 7)
    ids = torch.randint(0, 7, (3, 5))
    out = token_logprobs(logits, ids)
    assert out.shape == (3, 4)
    expected = torch.log_softmax(logits[1, 2], -1)[ids[1, 3]]
    assert out[1, 2].item() == pytest.approx(expected.item(), abs=1e-6)


def _tiny_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def _batch(ids: list[int]):
    t = torch.tensor([ids])
    return {"input_ids": t, "attention_mask": torch.ones_like(t), "loss_mask": torch.ones_like(t)}


def test_gradient_ascent_raises_forget_nll(tiny_llama_dir):
    model = _tiny_model(tiny_llama_dir)
    batch = _batch([5, 17, 42, 99, 7, 13, 21, 8])
    before = nll(model(**{k: batch[k] for k in ("input_ids",)}).logits, batch["input_ids"],
                 batch["loss_mask"]).item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss, parts = combined_loss({"forget_ga": 1.0}, model, None, {"forget": batch})
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = nll(model(input_ids=batch["input_ids"]).logits, batch["input_ids"],
                batch["loss_mask"]).item()
    assert after > before + 0.1
    assert set(parts) == {"forget_ga"}


def test_combined_loss_is_the_weighted_sum_and_kl_starts_at_zero(tiny_llama_dir):
    """ICU at the start: the policy equals the reference, so analogous_kl = 0 and the total is
    forget_ga + 0.5 * analogous_nll."""
    model = _tiny_model(tiny_llama_dir)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    batches = {"forget": _batch([5, 17, 42, 99]), "analogous": _batch([8, 9, 10, 11, 12])}
    total, parts = combined_loss(METHODS["icu"].weights, model, reference, batches)
    assert parts["analogous_kl"] == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(
        parts["forget_ga"] + 0.5 * parts["analogous_nll"], rel=1e-5
    )


def test_every_method_uses_known_terms():
    for method in METHODS.values():
        assert set(method.weights) <= set(LOSS_TERMS)
    assert METHODS["icu"].weights == {"forget_ga": 1.0, "analogous_nll": 0.5, "analogous_kl": 1.0}
