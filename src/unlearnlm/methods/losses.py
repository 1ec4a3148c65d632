"""Loss terms as pure functions, and methods as named loss weights.

Shapes: ``logits`` (B, T, V), ``input_ids`` and ``loss_mask`` (B, T). ``loss_mask[b, t] = 1``
means token t of sample b is a target, predicted from tokens < t (position 0 is never a target).
Every term averages over the target tokens of the batch (the Hugging Face convention); the paper
writes sums, and Adam makes the two differ only in how terms of different lengths weigh. When a
batch is one process's share of a larger batch, ``total`` is the denominator of that mean (the
whole batch's count of target tokens, or of rows, divided by the number of processes), so that the
processes' terms average to the whole batch's term (``train.distributed``).

A method is a weighted sum of named terms (``LOSS_TERMS``), each reading one kind of batch:
``forget`` (the active forget samples), ``analogous`` (their KNN partners), ``retain``,
``mismatch`` (each forget prefix followed by another text's suffix; targets: that suffix) or
``preference`` (2B rows: B forget prefixes with a preferred answer, then the same B prefixes with
their true suffix; targets: the answers) or ``relabel`` (each forget text's opening followed by the
body of its nearest analogous text; targets: that body).

Most terms read the logits; RMU's terms read one block's hidden states, ``hidden`` (B, T, H), which
``combined_loss`` asks the model for only for a batch that such a term reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnlm.errors import UnlearnError


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log P(x_t | x_<t) for t = 1..T-1, shape (B, T-1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor,
                 total: float | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    denominator = mask.sum().clamp(min=1.0) if total is None else max(float(total), 1e-12)
    return (values * mask).sum() / denominator


def _row_mean(values: torch.Tensor, total: float | None = None) -> torch.Tensor:
    return values.mean() if total is None else values.sum() / max(float(total), 1e-12)


def nll(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
        total: float | None = None) -> torch.Tensor:
    """Negative log-likelihood: -mean_t log P(x_t | x_<t) over target tokens."""
    return -_masked_mean(token_logprobs(logits, input_ids), loss_mask[:, 1:], total)


def forget_ga(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
    total: float | None = None,
) -> torch.Tensor:
    """Knowledge unlearning by gradient ascent (Jang et al. 2023, "Knowledge Unlearning for
    Mitigating Privacy Risks in Language Models"; ICU's L_fgt): +mean_t log P(x_t | x_<t).
    Minimising it lowers the likelihood of the forget text."""
    return -nll(logits, input_ids, loss_mask, total)


def sample_nll(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
               cap: float | None = None) -> torch.Tensor:
    """Per row: mean_t of -log P(x_t | x_<t) over that row's target tokens, shape (B,); with
    ``cap``, each token's NLL counts at most ``cap``."""
    mask = loss_mask[:, 1:].to(torch.float32)
    per_token = -token_logprobs(logits, input_ids)  # (B, T-1)
    if cap is not None:
        per_token = per_token.clamp(max=float(cap))
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def bounded_forget(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, floor: torch.Tensor,
    cap: float | None = None, rows: float | None = None,
) -> torch.Tensor:
    """Gradient ascent that stops at a floor: mean_b max(0, floor_b - NLL_b), NLL_b the mean
    per-token NLL of row b's target tokens, each token counting at most ``cap`` nats.

    Below the floor it is the gradient ascent of Jang et al. (2023) on that row; once the text is
    as unlikely as the floor (set from texts the model never saw, the yardstick Jang et al. used
    for their stop thresholds) the row contributes nothing, so the push ends where "never seen"
    begins instead of running on into collapse. ``floor``: a scalar or one value per row (B,).

    The cap spreads the push: without it the mean can reach the floor by making two or three
    tokens absurdly unlikely while the rest of the text, given its own beginning, still comes
    back word for word; a token past the cap gives no more gradient, so the others must rise."""
    per_row = sample_nll(logits, input_ids, loss_mask, cap)  # (B,)
    floor = torch.as_tensor(floor, dtype=per_row.dtype, device=per_row.device)
    return _row_mean(torch.relu(floor - per_row), rows)


def token_bounded_forget(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, floor: torch.Tensor,
    total: float | None = None,
) -> torch.Tensor:
    """Gradient ascent bounded token by token: the mean over target tokens of
    max(0, floor - NLL_t), NLL_t = -log P(x_t | x_<t).

    ``bounded_forget`` stops a whole text once its mean NLL reaches the floor, and a mean can get
    there through two or three tokens pushed to absurd values while the tokens after them, given
    the true text so far, still come back word for word. Here every token stops on its own as
    soon as it is as unlikely as the floor, and until then it pulls with the same weight as the
    others: the push spreads over the whole text and ends nowhere beyond "never seen". The
    bound is the one of ``bounded_forget`` (set from never-seen texts, the yardstick of Jang et
    al. 2023's stop thresholds) applied per token, in the spirit of the token-level unlikelihood
    of Welleck et al. (2020) with a hinge that keeps it finite. ``floor``: a scalar or (B,);
    ``total``: the target count of the global batch when it is split over processes."""
    per_token = -token_logprobs(logits, input_ids)  # (B, T-1)
    floor = torch.as_tensor(floor, dtype=per_token.dtype, device=per_token.device)
    if floor.dim() == 1:
        floor = floor[:, None]
    return _masked_mean(torch.relu(floor - per_token), loss_mask[:, 1:], total)


def kl_to_reference(
    logits: torch.Tensor, reference_logits: torch.Tensor, loss_mask: torch.Tensor,
    total: float | None = None,
) -> torch.Tensor:
    """KL(P_theta0(.|x_<t) || P_theta(.|x_<t)) averaged over target positions (ICU's L_kl,
    Tang et al. 2024; also TOFU's KL baseline, Maini et al. 2024). theta0 is the frozen original."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    ref_logp = F.log_softmax(reference_logits[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T-1)
    return _masked_mean(kl, loss_mask[:, 1:], total)


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                      loss_mask: torch.Tensor) -> torch.Tensor:
    """log P(y_b | x_b) = sum_t log P(x_t | x_<t) over the target tokens of each row, shape (B,)."""
    return (token_logprobs(logits, input_ids) * loss_mask[:, 1:].float()).sum(-1)


def npo(
    logits: torch.Tensor,
    reference_logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    beta: float = 0.1,
    rows: float | None = None,
) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024):
    -(2/beta) * mean_b log sigmoid(-beta * (log P_theta(y_b) - log P_theta0(y_b)))."""
    policy = sequence_logprobs(logits, input_ids, loss_mask)  # (B,)
    reference = sequence_logprobs(reference_logits, input_ids, loss_mask)
    return -(2.0 / beta) * _row_mean(F.logsigmoid(-beta * (policy - reference)), rows)


def dpo(
    logits: torch.Tensor,
    reference_logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    beta: float = 0.1,
    rows: float | None = None,
) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al. 2023, "Direct Preference Optimization"),
    used for unlearning as in TOFU (Maini et al. 2024): the true answer is the rejected one.

    The batch holds 2B rows: rows 0..B-1 are the preferred answers y_w, rows B..2B-1 the rejected
    answers y_l for the same prompts; ``loss_mask`` covers the answer tokens only. With
    r(y) = log P_theta(y | x) - log P_theta0(y | x) (sums over answer tokens):
    -mean_b log sigmoid(beta * (r(y_w) - r(y_l))). It equals log 2 while P_theta = P_theta0."""
    policy = sequence_logprobs(logits, input_ids, loss_mask)  # (2B,)
    reference = sequence_logprobs(reference_logits, input_ids, loss_mask)
    ratio = policy - reference
    preferred, rejected = ratio.chunk(2)  # (B,), (B,)
    return -_row_mean(F.logsigmoid(beta * (preferred - rejected)), rows)


def simnpo(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
    beta: float = 4.5, gamma: float = 0.0, rows: float | None = None,
) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization
    for LLM Unlearning"): NPO without the reference model, its log-probability divided by the
    answer's length, with a margin gamma:
    -(2/beta) * mean_b log sigmoid(-(beta / |y_b|) log P_theta(y_b) - gamma).

    -(1/|y_b|) log P_theta(y_b) is row b's mean per-token NLL, so each row contributes
    (2/beta) log(1 + e^gamma * p_b^beta), p_b the geometric mean of its target tokens'
    probabilities: the push fades as p_b falls, whatever the text's length (NPO sums over tokens,
    which weighs long texts more, and divides by the reference model's probability, a bias the
    paper argues misplaces the push)."""
    per_row = sample_nll(logits, input_ids, loss_mask)  # (B,)
    return -(2.0 / beta) * _row_mean(F.logsigmoid(beta * per_row - gamma), rows)


def undial(
    logits: torch.Tensor, reference_logits: torch.Tensor, input_ids: torch.Tensor,
    loss_mask: torch.Tensor, strength: float = 10.0, total: float | None = None,
) -> torch.Tensor:
    """UNDIAL (Dong et al. 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust
    Unlearning in Large Language Models"): self-distillation toward the frozen model's next-token
    distribution with the true token's logit lowered by ``strength``:
    q_t = softmax(z0_t - strength * e_{x_t}), z0_t the reference logits that predict x_t;
    loss = mean_t KL(q_t || P_theta(. | x_<t)) over target positions.

    The target is a fixed distribution (bounded: nothing is pushed to zero, and every other token
    keeps the frozen model's proportions). The paper (and open-unlearning) minimise the cross-
    entropy -sum_v q_t(v) log P_theta(v | x_<t), which is this KL plus the entropy of q_t, a
    constant: the same gradient, and here the value reads 0 once the policy is the target."""
    adjusted = reference_logits.detach().float().clone()  # (B, T, V)
    following = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1): the token each position predicts
    lowered = torch.full(following.shape, -float(strength), dtype=adjusted.dtype,
                         device=adjusted.device)
    adjusted[:, :-1].scatter_add_(-1, following, lowered)
    return kl_to_reference(logits, adjusted, loss_mask, total)


def steering_vector(size: int, seed: int) -> torch.Tensor:
    """RMU's fixed random direction u, shape (size,): uniform in [0, 1)^size and scaled to unit
    length, as the WMDP code draws it; the same seed gives the same vector in every process."""
    generator = torch.Generator().manual_seed(int(seed))
    vector = torch.rand(size, generator=generator)
    return vector / vector.norm()


def rmu_forget(
    hidden: torch.Tensor, loss_mask: torch.Tensor, target: torch.Tensor,
    total: float | None = None,
) -> torch.Tensor:
    """RMU's forget term (Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious
    Use With Unlearning", representation misdirection): mean over target tokens t of
    mean_d (h_t,d - c u_d)^2, h_t the policy's hidden state at the steered block on token t and
    ``target`` = c u (H,), a scaled random direction (``steering_vector``). Driving the forget
    text's activations to one arbitrary large vector scrambles what the later blocks read."""
    difference = hidden[:, 1:].float() - target.to(hidden.device, torch.float32)  # (B, T-1, H)
    return _masked_mean(difference.pow(2).mean(-1), loss_mask[:, 1:], total)


def rmu_retain(
    hidden: torch.Tensor, reference_hidden: torch.Tensor, loss_mask: torch.Tensor,
    total: float | None = None,
) -> torch.Tensor:
    """RMU's retain term (Li et al. 2024, WMDP): mean over target tokens t of
    mean_d (h_t,d - h0_t,d)^2, h and h0 the policy's and the frozen model's hidden states at the
    steered block on retain text: the activations of what must stay stay where they were."""
    difference = hidden[:, 1:].float() - reference_hidden[:, 1:].float()  # (B, T-1, H)
    return _masked_mean(difference.pow(2).mean(-1), loss_mask[:, 1:], total)


@dataclass(frozen=True)
class LossTerm:
    """A named term: which batch it reads and which pure function scores it."""

    batch: str  # "forget" | "analogous" | "retain" | "mismatch" | "preference" | "relabel"
    # "ga" | "nll" | "kl" | "npo" | "dpo" | "bounded" | "token_bounded" | "simnpo" | "undial"
    # | "rmu_steer" | "rmu_keep"
    kind: str

    @property
    def needs_reference(self) -> bool:
        return self.kind in ("kl", "npo", "dpo", "undial", "rmu_keep")

    @property
    def needs_hidden(self) -> bool:
        """Whether the term reads hidden states (RMU) rather than logits alone."""
        return self.kind in ("rmu_steer", "rmu_keep")


LOSS_TERMS: dict[str, LossTerm] = {
    "forget_ga": LossTerm("forget", "ga"),
    "forget_npo": LossTerm("forget", "npo"),
    "analogous_nll": LossTerm("analogous", "nll"),
    "analogous_kl": LossTerm("analogous", "kl"),
    "retain_nll": LossTerm("retain", "nll"),
    "retain_kl": LossTerm("retain", "kl"),
    # LLMU's random mismatch (Yao et al. 2023, "Large Language Model Unlearning"): the NLL of
    # another text's suffix after each forget prefix, over the suffix tokens only
    "mismatch_nll": LossTerm("mismatch", "nll"),
    "forget_dpo": LossTerm("preference", "dpo"),
    # gradient ascent that stops at the never-seen texts' NLL (see ``bounded_forget``)
    "forget_bounded": LossTerm("forget", "bounded"),
    # the same bound applied to each token on its own (see ``token_bounded_forget``)
    "forget_token_bounded": LossTerm("forget", "token_bounded"),
    # relabelling: the forget text's opening followed by its nearest analogous text's body, so
    # the probability taken from the true body has a plausible alternative to go to
    "relabel_nll": LossTerm("relabel", "nll"),
    # SimNPO, UNDIAL and RMU (see ``simnpo``, ``undial``, ``rmu_forget`` and ``rmu_retain``)
    "forget_simnpo": LossTerm("forget", "simnpo"),
    "forget_undial": LossTerm("forget", "undial"),
    "forget_rmu": LossTerm("forget", "rmu_steer"),
    "retain_rmu": LossTerm("retain", "rmu_keep"),
}


@dataclass(frozen=True)
class Method:
    """Loss weights plus whether samples leave the forget set once forgotten (ICU's IUR)."""

    weights: dict[str, float]
    iterative_refinement: bool = True
    summary: str = ""
    # the learning rate when none is set, and how a plain text is cut: "window" (the paper: the
    # last prefix_tokens + suffix_tokens tokens, losses and the drop test on the suffix) or
    # "opening" (the whole text after its first opening_tokens tokens, checked from several cuts)
    lr: float = 5e-6
    split: str = "window"
    # which forget tokens the ascent targets: "all", or "distinct" (those whose bigram is absent
    # from the sample's analogous or relabel text; see ``data.texts.distinct_positions``)
    targets: str = "all"


ICU_WEIGHTS = {"forget_ga": 1.0, "analogous_nll": 0.5, "analogous_kl": 1.0}
RELABEL_WEIGHTS = {"forget_bounded": 1.0, "relabel_nll": 1.0, "retain_kl": 5.0}
METHODS: dict[str, Method] = {
    "relabel": Method(
        RELABEL_WEIGHTS, True,
        "relabel to the nearest analogous text + ascent bounded at never-seen NLL + KL on retain",
        lr=1e-4, split="opening"),
    "icu": Method(ICU_WEIGHTS, True, "ICU (Tang et al. 2024): GA + analogous NLL + KL, IUR"),
    "icu-no-kl": Method({"forget_ga": 1.0, "analogous_nll": 0.5}, True, "ICU without L_kl"),
    "icu-no-nll": Method({"forget_ga": 1.0, "analogous_kl": 1.0}, True, "ICU without L_lrn"),
    "icu-no-iur": Method(ICU_WEIGHTS, False, "ICU without per-sample dropping"),
    "ga": Method({"forget_ga": 1.0}, False, "gradient ascent (Jang et al. 2023, KUMPR)"),
    "graddiff": Method({"forget_ga": 1.0, "retain_nll": 1.0}, False, "GA + NLL on retain data"),
    "kl": Method({"forget_ga": 1.0, "retain_kl": 1.0}, False, "GA + KL to theta0 on retain data"),
    "npo": Method({"forget_npo": 1.0}, False, "NPO (Zhang et al. 2024), beta 0.1"),
    # Yao et al.'s code weighs GA 0.5, the random mismatch 1 and the KL on normal text 1
    "llmu": Method({"forget_ga": 0.5, "mismatch_nll": 1.0, "retain_kl": 1.0}, False,
                   "LLMU (Yao et al. 2023): GA + NLL of mismatched suffixes + KL on retain"),
    "dpo": Method({"forget_dpo": 1.0}, False,
                  "DPO (Rafailov et al. 2023; TOFU): dpo_preferred over the suffix, beta 0.1"),
    # open-unlearning's SimNPO (its TOFU setting, from the authors' code): the forget term
    # weighted 0.125 (its gamma, the authors' npo_coeff) and the retain NLL 1 (its alpha), beta
    # 4.5, margin 0 (its delta), lr 1e-5
    "simnpo": Method({"forget_simnpo": 0.125, "retain_nll": 1.0}, False,
                     "SimNPO (Fan et al. 2024): length-normalised NPO without reference, beta "
                     "4.5 + NLL on retain", lr=1e-5),
    # WMDP's run on Zephyr-7B: retain weight alpha 1200, lr 5e-5 (the steered block and the
    # coefficient c are settings: rmu_layer, rmu_coefficient)
    "rmu": Method({"forget_rmu": 1.0, "retain_rmu": 1200.0}, False,
                  "RMU (Li et al. 2024, WMDP): one block's forget activations to c*u, retain "
                  "activations kept", lr=5e-5),
    # open-unlearning's UNDIAL: strength 10 (its beta), no retain term (its alpha 0), lr 1e-4
    "undial": Method({"forget_undial": 1.0}, False,
                     "UNDIAL (Dong et al. 2024): distil the frozen logits with the true token "
                     "lowered by 10", lr=1e-4),
}


@dataclass(frozen=True)
class TermOptions:
    """The hyperparameters of the terms that have settings (``UnlearnConfig`` fills them in; the
    defaults are the methods' own, see ``METHODS``)."""

    simnpo_beta: float = 4.5
    simnpo_gamma: float = 0.0
    undial_strength: float = 10.0
    rmu_layer: int = 6  # the steered block, 0-based
    rmu_coefficient: float = 300.0  # c, the length of the vector the forget activations go to
    rmu_seed: int = 42  # draws the direction u


def batches_needed(weights: dict[str, float]) -> set[str]:
    return {LOSS_TERMS[name].batch for name, w in weights.items() if w != 0}


def needs_reference(weights: dict[str, float]) -> bool:
    return any(LOSS_TERMS[name].needs_reference for name, w in weights.items() if w != 0)


def reads_hidden_states(weights: dict[str, float]) -> bool:
    """Whether a term of these weights reads hidden states (then the later blocks, which only
    the logits depend on, get no gradient from it)."""
    return any(LOSS_TERMS[name].needs_hidden for name, w in weights.items() if w != 0)


def combined_loss(
    weights: dict[str, float],
    policy,
    reference,
    batches: dict[str, dict[str, torch.Tensor]],
    options: TermOptions | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_name weight * term(name); returns the total and each term's value (unweighted).

    One forward pass of the policy per batch kind, and one of the reference when a term needs
    it; hidden states are asked for only on a batch that a hidden-state term (RMU) reads, so the
    other terms cost what they did. ``options``: the terms' hyperparameters."""
    options = options or TermOptions()
    active = {name: w for name, w in weights.items()
              if w != 0 and LOSS_TERMS[name].batch in batches}
    hidden = {LOSS_TERMS[name].batch for name in active if LOSS_TERMS[name].needs_hidden}
    outputs: dict[str, tuple] = {}  # batch kind -> (logits, hidden states or None)
    ref_outputs: dict[str, tuple] = {}
    total = torch.zeros((), device=next(policy.parameters()).device)
    parts: dict[str, float] = {}
    for name, weight in active.items():
        term = LOSS_TERMS[name]
        batch = batches[term.batch]
        if term.batch not in outputs:
            outputs[term.batch] = _forward(policy, batch, term.batch in hidden)
        if term.needs_reference and term.batch not in ref_outputs:
            with torch.no_grad():
                ref_outputs[term.batch] = _forward(reference, batch, term.batch in hidden)
        value = _term_value(term, outputs[term.batch], ref_outputs.get(term.batch), batch,
                            options)
        parts[name] = float(value.detach())
        total = total + weight * value
    return total, parts


def _forward(model, batch: dict, hidden: bool) -> tuple:
    """(logits, hidden states) of a batch; the hidden states only when asked (else None), and
    nothing else of the model's output is kept."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if not hidden:
        return model(**inputs).logits, None
    out = model(**inputs, output_hidden_states=True)
    return out.logits, out.hidden_states


def block_output(hidden_states: tuple, layer: int) -> torch.Tensor:
    """The hidden states after block ``layer`` (0-based), (B, T, H): Hugging Face's
    ``hidden_states[layer + 1]`` (entry 0 is the embeddings; the last entry, the last block's,
    comes after the final norm)."""
    if not 0 <= layer < len(hidden_states) - 1:
        raise UnlearnError(f"rmu_layer {layer} is not a block of this model (it has blocks 0 to "
                           f"{len(hidden_states) - 2}): give a --rmu-layer in that range")
    return hidden_states[layer + 1]


def _term_value(term: LossTerm, out, ref_out, batch, options: TermOptions) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["loss_mask"]
    targets, rows = batch.get("targets_total"), batch.get("rows_total")
    if term.needs_hidden:
        return _hidden_term(term, out, ref_out, mask, targets, options)
    logits = out[0]
    ref_logits = None if ref_out is None else ref_out[0]
    if term.kind == "simnpo":
        return simnpo(logits, ids, mask, options.simnpo_beta, options.simnpo_gamma, rows)
    if term.kind == "undial":
        return undial(logits, ref_logits, ids, mask, options.undial_strength, targets)
    if term.kind == "ga":
        return forget_ga(logits, ids, mask, targets)
    if term.kind == "nll":
        return nll(logits, ids, mask, targets)
    if term.kind == "kl":
        return kl_to_reference(logits, ref_logits, mask, targets)
    if term.kind == "dpo":
        return dpo(logits, ref_logits, ids, mask, rows=rows)
    if term.kind == "bounded":
        return bounded_forget(logits, ids, mask, batch["floor"], batch.get("cap"), rows)
    if term.kind == "token_bounded":
        return token_bounded_forget(logits, ids, mask, batch.get("token_floor", batch["floor"]),
                                    targets)
    return npo(logits, ref_logits, ids, mask, rows=rows)


def _hidden_term(term: LossTerm, out, ref_out, mask, targets, options: TermOptions):
    hidden = block_output(out[1], options.rmu_layer)  # (B, T, H)
    if term.kind == "rmu_keep":
        return rmu_retain(hidden, block_output(ref_out[1], options.rmu_layer), mask, targets)
    direction = steering_vector(hidden.shape[-1], options.rmu_seed)
    return rmu_forget(hidden, mask, options.rmu_coefficient * direction, targets)
