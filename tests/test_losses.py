"""Loss terms: values derived by hand, and the direction each one moves the model."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from unlearnlm.data.texts import Sample
from unlearnlm.methods.losses import (
    LOSS_TERMS,
    METHODS,
    combined_loss,
    dpo,
    forget_ga,
    kl_to_reference,
    nll,
    npo,
    sequence_logprobs,
    token_logprobs,
)
from unlearnlm.train.unlearn import completion_batch


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


def test_dpo_at_reference_equals_log_two():
    """With P_theta = P_theta0 both log-ratios are 0, so the loss is -log sigmoid(0) = log 2 for
    any beta and any answers."""
    logits = torch.randn(4, 5, 7)  # B = 2 prompts: 2 preferred rows, then 2 rejected rows
    ids = torch.randint(0, 7, (4, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1]] * 4)
    for beta in (0.1, 1.0):
        assert dpo(logits, logits, ids, mask, beta=beta).item() == pytest.approx(
            math.log(2.0), abs=1e-6
        )


def test_dpo_matches_hand_computation():
    """Vocabulary of 2, one prompt [0]; preferred answer [1], rejected answer [0]. The reference
    gives both tokens 1/2; the policy gives token 1 3/4 and token 0 1/4 (logits (0, log 3)).
    r(y_w) = log(3/4) - log(1/2) = log(3/2), r(y_l) = log(1/4) - log(1/2) = log(1/2), so
    r(y_w) - r(y_l) = log 3. With beta = 1: -log sigmoid(log 3) = -log(3/4) = 0.28768; with
    beta = 0.1: -log sigmoid(0.1 log 3) = log(1 + 3^-0.1) = 0.63972."""
    policy = torch.tensor([[[0.0, math.log(3.0)]] * 2] * 2)  # (2, 2, 2)
    reference = torch.zeros(2, 2, 2)
    ids = torch.tensor([[0, 1], [0, 0]])
    mask = torch.tensor([[0, 1], [0, 1]])
    assert dpo(policy, reference, ids, mask, beta=1.0).item() == pytest.approx(
        -math.log(0.75), abs=1e-6
    )
    assert dpo(policy, reference, ids, mask, beta=0.1).item() == pytest.approx(
        math.log(1.0 + 3.0 ** -0.1), abs=1e-6
    )


def test_dpo_step_lowers_the_rejected_answer_and_raises_the_preferred():
    """d loss / d r(y_l) = beta * sigmoid(-beta (r(y_w) - r(y_l))) = beta / 2 > 0 at the start,
    and d loss / d r(y_w) = -beta / 2, so one gradient-descent step on the logits lowers the
    rejected answer's log-probability and raises the preferred one's."""
    torch.manual_seed(0)
    reference = torch.randn(2, 4, 6)
    ids = torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[0, 0, 1, 1]] * 2)
    logits = reference.clone().requires_grad_(True)
    dpo(logits, reference, ids, mask, beta=0.1).backward()
    stepped = logits.detach() - 1.0 * logits.grad
    before = sequence_logprobs(reference, ids, mask)
    after = sequence_logprobs(stepped, ids, mask)
    assert after[0] > before[0]  # preferred up
    assert after[1] < before[1]  # rejected down


def test_completion_batch_masks_only_the_completion():
    """Prefixes [5, 6, 7] and [1, 2] with the single completion [8, 9]: rows [5, 6, 7, 8, 9] and
    [1, 2, 8, 9, pad]; targets are the completion tokens only (mask 0 0 0 1 1 and 0 0 1 1 0).
    With the true suffixes appended (the preference layout) rows 2 and 3 are the samples
    themselves, masked from their prefix length on."""
    samples = [Sample("a", "", [5, 6, 7], [3, 4]), Sample("b", "", [1, 2], [3])]
    rng = random.Random(0)
    batch = completion_batch(samples, [[8, 9]], rng, pad=0, device="cpu")
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 8, 9, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    pref = completion_batch(samples, [[8, 9]], rng, pad=0, device="cpu", with_true_suffix=True)
    assert pref["input_ids"].tolist()[2:] == [[5, 6, 7, 3, 4], [1, 2, 3, 0, 0]]
    assert pref["loss_mask"].tolist()[2:] == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]


def test_completion_batch_draws_from_the_rng():
    """The same seed gives the same completions (resumable); completions come from the list."""
    samples = [Sample(str(i), "", [1, 2], [3]) for i in range(6)]
    completions = [[10], [11], [12], [13]]
    first = completion_batch(samples, completions, random.Random(3), pad=0, device="cpu")
    again = completion_batch(samples, completions, random.Random(3), pad=0, device="cpu")
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert set(first["input_ids"][:, 2].tolist()) <= {10, 11, 12, 13}


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
    assert METHODS["llmu"].weights == {"forget_ga": 0.5, "mismatch_nll": 1.0, "retain_kl": 1.0}
    assert METHODS["dpo"].weights == {"forget_dpo": 1.0}


def test_llmu_starts_as_half_ga_plus_mismatch_nll(tiny_llama_dir):
    """LLMU at the start: the policy equals the reference, so retain_kl = 0 and the total is
    0.5 * forget_ga + mismatch_nll; mismatch_nll is the NLL over the completion tokens only."""
    model = _tiny_model(tiny_llama_dir)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    sample = Sample("a", "", [5, 17, 42], [99, 7])
    mismatch = completion_batch([sample], [[8, 9, 10]], random.Random(0), pad=0, device="cpu")
    batches = {"forget": _batch([5, 17, 42, 99, 7]), "mismatch": mismatch,
               "retain": _batch([11, 12, 13, 14])}
    total, parts = combined_loss(METHODS["llmu"].weights, model, reference, batches)
    assert parts["retain_kl"] == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(0.5 * parts["forget_ga"] + parts["mismatch_nll"],
                                         rel=1e-5)
    logits = model(input_ids=mismatch["input_ids"]).logits
    completion_only = -token_logprobs(logits, mismatch["input_ids"])[0, 2:].mean()
    assert parts["mismatch_nll"] == pytest.approx(completion_only.item(), rel=1e-5)


def test_dpo_term_starts_at_log_two(tiny_llama_dir):
    """Through combined_loss, on a preference batch built from one forget sample: log 2."""
    model = _tiny_model(tiny_llama_dir)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    sample = Sample("a", "", [5, 17, 42], [99, 7])
    pref = completion_batch([sample], [[8, 9]], random.Random(0), pad=0, device="cpu",
                            with_true_suffix=True)
    total, parts = combined_loss(METHODS["dpo"].weights, model, reference, {"preference": pref})
    assert parts["forget_dpo"] == pytest.approx(math.log(2.0), abs=1e-5)
