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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


@dataclass(frozen=True)
class LossTerm:
    """A named term: which batch it reads and which pure function scores it."""

    batch: str  # "forget" | "analogous" | "retain" | "mismatch" | "preference" | "relabel"
    kind: str  # "ga" | "nll" | "kl" | "npo" | "dpo" | "bounded" | "token_bounded"

    @property
    def needs_reference(self) -> bool:
        return self.kind in ("kl", "npo", "dpo")


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
}


def batches_needed(weights: dict[str, float]) -> set[str]:
    return {LOSS_TERMS[name].batch for name, w in weights.items() if w != 0}


def needs_reference(weights: dict[str, float]) -> bool:
    return any(LOSS_TERMS[name].needs_reference for name, w in weights.items() if w != 0)


def combined_loss(
    weights: dict[str, float],
    policy,
    reference,
    batches: dict[str, dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_name weight * term(name); returns the total and each term's value (unweighted)."""
    logits: dict[str, torch.Tensor] = {}
    ref_logits: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=next(policy.parameters()).device)
    parts: dict[str, float] = {}
    for name, weight in weights.items():
        term = LOSS_TERMS[name]
        if weight == 0 or term.batch not in batches:
            continue
        batch = batches[term.batch]
        if term.batch not in logits:
            logits[term.batch] = policy(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        if term.needs_reference and term.batch not in ref_logits:
            with torch.no_grad():
                ref_logits[term.batch] = reference(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
        value = _term_value(term, logits[term.batch], ref_logits.get(term.batch), batch)
        parts[name] = float(value.detach())
        total = total + weight * value
    return total, parts


def _term_value(term: LossTerm, logits, ref_logits, batch) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["loss_mask"]
    targets, rows = batch.get("targets_total"), batch.get("rows_total")
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
