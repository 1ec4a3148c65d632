"""Loss terms: values derived by hand, and the direction each one moves the model."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from unlearnlm.data.texts import Sample
from unlearnlm.errors import UnlearnError
from unlearnlm.methods.losses import (
    LOSS_TERMS,
    METHODS,
    TermOptions,
    block_output,
    combined_loss,
    dpo,
    forget_ga,
    kl_to_reference,
    nll,
    npo,
    rmu_forget,
    rmu_retain,
    sequence_logprobs,
    simnpo,
    steering_vector,
    token_logprobs,
    undial,
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


# --- SimNPO, UNDIAL, RMU ------------------------------------------------------------------------

# Vocabulary of 2, logits (0, log 3) at every position: P(token 1) = 3/4, P(token 0) = 1/4.
THREE_QUARTERS = [0.0, math.log(3.0)]


def test_simnpo_matches_hand_computation():
    """Row A = [0, 1, 1], both targets token 1: mean NLL -log 3/4, geometric-mean probability
    p_A = 3/4. Row B = [0, 1, 0]: targets 1 and 0, p_B = sqrt(3/4 * 1/4) = sqrt(3)/4. A row's loss
    is -(2/beta) log sigmoid(beta NLL - gamma) = (2/beta) log(1 + e^gamma p^beta).
    beta 2, gamma 0: log(1 + 9/16) = 0.44629 and log(1 + 3/16) = 0.17185, mean 0.30907.
    beta 1, gamma log 2: 2 log(1 + 2 * 3/4) = 1.83258 and 2 log(1 + sqrt(3)/2) = 1.24762, mean
    1.54010."""
    logits = torch.tensor([[THREE_QUARTERS] * 3] * 2)
    ids = torch.tensor([[0, 1, 1], [0, 1, 0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1]])
    assert simnpo(logits, ids, mask, beta=2.0, gamma=0.0).item() == pytest.approx(
        (math.log(25 / 16) + math.log(19 / 16)) / 2, abs=1e-6)
    assert simnpo(logits, ids, mask, beta=1.0, gamma=math.log(2.0)).item() == pytest.approx(
        (2 * math.log(2.5) + 2 * math.log(1 + math.sqrt(3) / 2)) / 2, abs=1e-6)


def test_simnpo_is_normalised_by_length_where_npo_is_not():
    """Target 1 four times instead of twice: the geometric-mean probability stays 3/4, so SimNPO
    is unchanged (log(25/16) at beta 2); NPO sums the log-ratio over tokens and changes."""
    short_ids, long_ids = torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 1, 1, 1]])
    short = torch.tensor([[THREE_QUARTERS] * 3])
    long = torch.tensor([[THREE_QUARTERS] * 5])
    values = [simnpo(x, ids, torch.ones_like(ids), beta=2.0).item()
              for x, ids in ((short, short_ids), (long, long_ids))]
    assert values == pytest.approx([math.log(25 / 16)] * 2, abs=1e-6)
    reference = torch.zeros(1, 5, 2)  # P = 1/2: NPO's log-ratio per token is log(3/2)
    npo_short = npo(short, reference[:, :3], short_ids, torch.ones_like(short_ids), beta=1.0)
    npo_long = npo(long, reference, long_ids, torch.ones_like(long_ids), beta=1.0)
    assert npo_long.item() > npo_short.item() + 0.5


def test_undial_matches_hand_computation_on_three_tokens():
    """One target, token 1, vocabulary of 3. Reference logits (1, 2, 0), strength 2: adjusted
    (1, 0, 0), so q = (e, 1, 1) / (e + 2) = (0.57612, 0.21194, 0.21194). A uniform policy gives
    KL(q || 1/3) = log 3 + sum q log q = 0.12328; the policy equal to the adjusted logits gives 0;
    the policy equal to the reference, p = (e, e^2, 1) / (e + e^2 + 1), gives sum q log(q / p)."""
    ids = torch.tensor([[0, 1]])
    mask = torch.tensor([[0, 1]])
    reference = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])
    e = math.e
    q = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    p = [e / (e + e * e + 1), e * e / (e + e * e + 1), 1 / (e + e * e + 1)]
    uniform = torch.zeros(1, 2, 3)
    assert undial(uniform, reference, ids, mask, strength=2.0).item() == pytest.approx(
        math.log(3) + sum(x * math.log(x) for x in q), abs=1e-6)
    assert undial(uniform, reference, ids, mask, strength=2.0).item() == pytest.approx(
        0.12328, abs=1e-5)
    adjusted = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert undial(adjusted, reference, ids, mask, strength=2.0).item() == pytest.approx(
        0.0, abs=1e-6)
    assert undial(reference, reference, ids, mask, strength=2.0).item() == pytest.approx(
        sum(a * math.log(a / b) for a, b in zip(q, p)), abs=1e-6)


def test_undial_lowers_the_token_each_position_predicts():
    """ids [0, 2, 1], reference logits 0, strength log 2: position 0 predicts token 2, so its
    target is (1, 1, 1/2) / 2.5 = (0.4, 0.4, 0.2); position 1 predicts token 1: (0.4, 0.2, 0.4).
    A policy with logits (0, 0, -log 2) then uniform matches the first exactly (KL 0) and is
    KL(q || 1/3) = log 3 + 2 * 0.4 log 0.4 + 0.2 log 0.2 = 0.04369 off the second: mean 0.02185.
    Lowering the wrong tokens would leave position 0 off its target."""
    ids = torch.tensor([[0, 2, 1]])
    mask = torch.tensor([[0, 1, 1]])
    reference = torch.zeros(1, 3, 3)
    policy = torch.tensor([[[0.0, 0.0, -math.log(2.0)], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    second = math.log(3) + 2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)
    assert undial(policy, reference, ids, mask, strength=math.log(2.0)).item() == pytest.approx(
        second / 2, abs=1e-6)
    assert reference.abs().sum() == 0  # the reference logits are not changed in place


def test_steering_vector_is_a_seeded_unit_vector():
    u = steering_vector(16, seed=3)
    assert u.shape == (16,) and u.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert (u >= 0).all()  # uniform in [0, 1) before scaling, as WMDP draws it
    assert torch.equal(u, steering_vector(16, seed=3))
    assert not torch.equal(u, steering_vector(16, seed=4))


def test_rmu_terms_match_hand_computation():
    """Hidden states (width 2) at three positions; position 0 is never a target. Policy: (100,
    100), (3, 4), (0, 0); target c u = (1, 0): the squared distances over width are (4 + 16) / 2 =
    10 and (1 + 0) / 2 = 0.5, mean 5.25; with the second target masked, 10. Reference states
    (_, (1, 1), (0, 2)): (4 + 9) / 2 = 6.5 and (0 + 4) / 2 = 2, mean 4.25. With ``total`` 4 (the
    global batch's target count over the processes) the forget sum 10.5 is divided by 4."""
    hidden = torch.tensor([[[100.0, 100.0], [3.0, 4.0], [0.0, 0.0]]])
    reference = torch.tensor([[[-7.0, 7.0], [1.0, 1.0], [0.0, 2.0]]])
    target = torch.tensor([1.0, 0.0])
    both, first = torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]])
    assert rmu_forget(hidden, both, target).item() == pytest.approx(5.25)
    assert rmu_forget(hidden, first, target).item() == pytest.approx(10.0)
    assert rmu_forget(hidden, both, target, total=4.0).item() == pytest.approx(10.5 / 4)
    assert rmu_retain(hidden, reference, both).item() == pytest.approx(4.25)
    assert rmu_retain(reference, reference, both).item() == 0.0


def test_block_output_is_the_blocks_hidden_state_and_refuses_other_layers():
    states = tuple(torch.full((1, 2, 3), float(i)) for i in range(3))  # embeddings, 2 blocks
    assert block_output(states, 0)[0, 0, 0].item() == 1.0
    assert block_output(states, 1)[0, 0, 0].item() == 2.0
    with pytest.raises(UnlearnError, match="rmu_layer 2 is not a block of this model"):
        block_output(states, 2)


class _Recording(torch.nn.Module):
    """A model that notes the keywords of every call."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.calls: list[set[str]] = []

    def forward(self, **inputs):
        self.calls.append(set(inputs))
        return self.model(**inputs)


def test_rmu_reads_block_states_and_only_its_batch_asks_for_them(tiny_llama_dir):
    """At the start the policy is the reference, so retain_rmu = 0 and the total is forget_rmu,
    which is the mean over the forget targets of mean_d (h - c u)^2 with h the output of block 0
    (hidden_states[1]). forget_ga's batch is run without hidden states; the retain batch, which
    only RMU reads, with them; the forget batch that both read, with them once."""
    model = _tiny_model(tiny_llama_dir)
    reference = _Recording(copy.deepcopy(model).eval().requires_grad_(False))
    policy = _Recording(model)
    options = TermOptions(rmu_layer=0, rmu_coefficient=3.0, rmu_seed=7)
    forget, retain = _batch([5, 17, 42, 99]), _batch([8, 9, 10, 11, 12])
    total, parts = combined_loss(METHODS["rmu"].weights, policy, reference,
                                 {"forget": forget, "retain": retain}, options)
    hidden = model(input_ids=forget["input_ids"], output_hidden_states=True).hidden_states[1]
    expected = (hidden[0, 1:] - 3.0 * steering_vector(32, 7)).pow(2).mean(-1).mean()
    assert parts["forget_rmu"] == pytest.approx(expected.item(), rel=1e-5)
    assert parts["retain_rmu"] == pytest.approx(0.0, abs=1e-10)
    assert total.item() == pytest.approx(parts["forget_rmu"], rel=1e-6)
    assert all("output_hidden_states" in call for call in policy.calls + reference.calls)
    assert len(policy.calls) == 2 and len(reference.calls) == 1  # no reference pass for forget

    policy.calls.clear()
    combined_loss({"forget_ga": 1.0, "retain_rmu": 1.0}, policy, reference,
                  {"forget": forget, "retain": retain}, options)
    assert ["output_hidden_states" in call for call in policy.calls] == [False, True]


@pytest.mark.parametrize("term", ["forget_simnpo", "forget_undial"])
def test_simnpo_and_undial_lower_the_forget_texts_likelihood(term, tiny_llama_dir):
    """Three Adam steps on the term alone raise the forget text's NLL, as gradient ascent does
    (SimNPO pushes log P(y) down; UNDIAL's target takes probability from the true tokens).
    SimNPO's push on a row is 2 sigmoid(gamma - beta NLL): the random model's NLL is about
    log 300 = 5.7, where beta 4.5 leaves e^-25 of it, so the test takes beta 0.1 (a memorised
    text, NLL near 0, gets the full push at any beta)."""
    model = _tiny_model(tiny_llama_dir)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    batch = _batch([5, 17, 42, 99, 7, 13, 21, 8])
    before = nll(model(input_ids=batch["input_ids"]).logits, batch["input_ids"],
                 batch["loss_mask"]).item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss, parts = combined_loss({term: 1.0}, model, reference, {"forget": batch},
                                    TermOptions(simnpo_beta=0.1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = nll(model(input_ids=batch["input_ids"]).logits, batch["input_ids"],
                batch["loss_mask"]).item()
    assert after > before + 0.1
    assert set(parts) == {term}


def test_rmu_steps_move_the_forget_states_toward_the_steering_vector(tiny_llama_dir):
    """Five Adam steps on forget_rmu alone (lr 1e-2) take it under half its start: block 0's
    states on the forget text move toward c u."""
    model = _tiny_model(tiny_llama_dir)
    batch = {"forget": _batch([5, 17, 42, 99, 7, 13, 21, 8])}
    options = TermOptions(rmu_layer=0, rmu_coefficient=5.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(6):
        loss, parts = combined_loss({"forget_rmu": 1.0}, model, None, batch, options)
        values.append(parts["forget_rmu"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] < 0.5 * values[0]


def test_new_methods_weights():
    """The weights the sources use: open-unlearning's SimNPO (forget 0.125, retain NLL 1),
    WMDP's RMU (retain weight 1200), open-unlearning's UNDIAL (no retain term)."""
    assert METHODS["simnpo"].weights == {"forget_simnpo": 0.125, "retain_nll": 1.0}
    assert METHODS["rmu"].weights == {"forget_rmu": 1.0, "retain_rmu": 1200.0}
    assert METHODS["undial"].weights == {"forget_undial": 1.0}
    assert TermOptions().simnpo_beta == 4.5 and TermOptions().undial_strength == 10.0


def test_term_options_default_to_the_settings_defaults():
    """A direct call of combined_loss without options uses what a run uses by default."""
    from unlearnlm.settings import UnlearnConfig

    config, options = UnlearnConfig(), TermOptions()
    for name in ("simnpo_beta", "simnpo_gamma", "undial_strength", "rmu_coefficient"):
        assert getattr(options, name) == getattr(config, name), name
    assert options.rmu_seed == config.seed
