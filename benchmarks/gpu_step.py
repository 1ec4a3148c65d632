"""Tokens per second of unlearnlm's unlearning step and drop-test generation against plain
transformers on the same configuration, side by side in one run (the ratio is ours / plain).

Usage (on a GPU):
    python benchmarks/gpu_step.py --shape gpt-neo-125m --batch 32 --mixed-precision bf16
    python benchmarks/gpu_step.py --shape llama-7b --batch 8 --dtype bfloat16 --lora-rank 16
    python benchmarks/gpu_step.py --dry-run      # a tiny model on the CPU: checks it runs

Models are built from the shape's config with random weights (no download; the speed of a step
does not depend on what the weights are). One step is ICU's: forward and backward of the policy on
a forget batch and an analogous batch, a reference forward on the analogous batch for the KL
term, and an Adam step. Ours is ``unlearnlm.train.unlearn.unlearning_step`` on a model prepared by
``unlearnlm.train.models.prepare_training`` (LoRA, reference, autocast as ``unlearnlm unlearn``
sets them up); plain is the same arithmetic written directly against transformers (and peft with
--lora-rank). Both start from the same weights and inputs; the script checks that their first
losses agree and that their greedy generations are the same tokens before it reports speed.

Generation is the drop test's: ``--suffix`` greedy tokens after each ``--prefix``-token prompt,
for ``--prompts`` prompts, through ``LM.generate_suffixes`` (ours) and ``model.generate`` on
left-padded batches (plain). Tokens per second count forget-batch tokens for the step and new
tokens for generation. ``--json OUT`` writes the figures.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "tiny": ("llama", dict(vocab_size=512, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)),
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, tie_word_embeddings=True)),
    "gpt-neo-125m": ("gpt_neo", dict(vocab_size=50257, hidden_size=768, num_layers=12,
                                     num_heads=12, attention_types=[[["global", "local"], 6]],
                                     window_size=256, max_position_embeddings=2048)),
    "gpt-neo-1.3b": ("gpt_neo", dict(vocab_size=50257, hidden_size=2048, num_layers=24,
                                     num_heads=16, attention_types=[[["global", "local"], 12]],
                                     window_size=256, max_position_embeddings=2048)),
    "tinyllama-1.1b": ("llama", dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                     num_hidden_layers=22, num_attention_heads=32,
                                     num_key_value_heads=4)),
    "llama-7b": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                               num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=32)),
}
ICU = {"forget_ga": 1.0, "analogous_nll": 0.5, "analogous_kl": 1.0}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(shape: str, dtype: torch.dtype, attention: str, seed: int = 0):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig, LlamaForCausalLM

    kind, fields = SHAPES[shape]
    config_class, model_class = ((LlamaConfig, LlamaForCausalLM) if kind == "llama"
                                 else (GPTNeoConfig, GPTNeoForCausalLM))
    config = config_class(**fields, attn_implementation=attention)
    torch.manual_seed(seed)
    return model_class(config).to(dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device: torch.device, warmup: int, repeats: int) -> tuple[float, object]:
    """Median seconds of ``run()`` over ``repeats`` calls after ``warmup``; and its last value."""
    value = None
    for _ in range(warmup):
        value = run()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        clock = time.perf_counter()
        value = run()
        synchronize(device)
        seconds.append(time.perf_counter() - clock)
    return statistics.median(seconds), value


# --- plain transformers ------------------------------------------------------------------------


def _masked_token_logprobs(logits, ids):
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp, logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def plain_step(model, reference, optimizer, batches, autocast: dict) -> float:
    """ICU's loss written out: +NLL ascent on the forget suffix, NLL and KL on the analogous."""
    forget, analogous = batches["forget"], batches["analogous"]
    with torch.autocast(**autocast):
        f_logits = model(input_ids=forget["input_ids"],
                         attention_mask=forget["attention_mask"]).logits
        a_logits = model(input_ids=analogous["input_ids"],
                         attention_mask=analogous["attention_mask"]).logits
        with torch.no_grad():
            r_logits = reference(input_ids=analogous["input_ids"],
                                 attention_mask=analogous["attention_mask"]).logits
    f_mask = forget["loss_mask"][:, 1:].float()
    a_mask = analogous["loss_mask"][:, 1:].float()
    _, f_lp = _masked_token_logprobs(f_logits, forget["input_ids"])
    a_logp, a_lp = _masked_token_logprobs(a_logits, analogous["input_ids"])
    r_logp = F.log_softmax(r_logits[:, :-1].float(), dim=-1)
    forget_ga = (f_lp * f_mask).sum() / f_mask.sum()
    analogous_nll = -(a_lp * a_mask).sum() / a_mask.sum()
    kl = ((r_logp.exp() * (r_logp - a_logp)).sum(-1) * a_mask).sum() / a_mask.sum()
    loss = ICU["forget_ga"] * forget_ga + ICU["analogous_nll"] * analogous_nll + \
        ICU["analogous_kl"] * kl
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def plain_generate(model, prefixes: list[list[int]], new_tokens: int, pad: int,
                   batch: int) -> list[list[int]]:
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with torch.inference_mode():
        for first in range(0, len(prefixes), batch):
            chunk = prefixes[first:first + batch]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk],
                                device=device)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=None, temperature=None, top_p=None, top_k=None)
            out.extend(gen[:, width:].tolist())
    return out


# --- the run -----------------------------------------------------------------------------------


def _batches(vocab: int, batch: int, prefix: int, suffix: int, device, seed: int) -> dict:
    from unlearnlm.data.batches import collate

    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(3, vocab, (2, batch, prefix + suffix), generator=g).tolist()
    return {"forget": collate(rows[0], [prefix] * batch, 0, device),
            "analogous": collate(rows[1], [1] * batch, 0, device)}


def run(args) -> dict:
    from unlearnlm.data.texts import Sample
    from unlearnlm.lm.interface import LM
    from unlearnlm.lm.lora import AdapterOff, add_lora
    from unlearnlm.settings import UnlearnConfig
    from unlearnlm.train.models import make_accelerator, prepare_training
    from unlearnlm.train.unlearn import unlearning_step

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    base = build_model(args.shape, dtype, args.attention)
    vocab = base.config.vocab_size
    parameters = sum(p.numel() for p in base.parameters())

    # plain: the same weights, the same arithmetic, no unlearnlm
    plain = copy.deepcopy(base).to(device)
    if args.lora_rank:
        plain = add_lora(plain, args.lora_rank, 2.0 * args.lora_rank)
        plain_ref = AdapterOff(plain)
    else:
        plain_ref = copy.deepcopy(plain).eval().requires_grad_(False)
    plain.train()
    plain_opt = torch.optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=1e-5,
                                 betas=(0.9, 0.98))
    autocast = {"device_type": device.type, "dtype": torch.bfloat16,
                "enabled": args.mixed_precision == "bf16"}

    # ours: prepared as `unlearnlm unlearn` prepares it
    settings = UnlearnConfig(lora_rank=args.lora_rank, lora_alpha=2.0 * (args.lora_rank or 8),
                             mixed_precision=args.mixed_precision, dtype=args.dtype,
                             cpu=device.type == "cpu")
    accelerator = make_accelerator(settings.mixed_precision, settings.cpu)
    prepared = prepare_training(
        copy.deepcopy(base), accelerator, settings, reference=True,
        optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-5, betas=(0.9, 0.98)))
    prepared.model.train()
    del base

    batches = _batches(vocab, args.batch, args.prefix, args.suffix, device, seed=1)
    ours_first = unlearning_step(ICU, prepared.model, prepared.reference, prepared.optimizer,
                                 accelerator, batches)["total"]
    plain_first = plain_step(plain, plain_ref, plain_opt, batches, autocast)
    loss_gap = abs(ours_first - plain_first)
    tolerance = 1e-4 if args.mixed_precision == "no" and args.dtype == "float32" else 5e-2
    if loss_gap > tolerance:
        raise SystemExit(f"the two steps disagree: ours {ours_first:.6f}, plain "
                         f"{plain_first:.6f}; fix the comparison before timing it")
    step_ours, _ = timed(lambda: unlearning_step(
        ICU, prepared.model, prepared.reference, prepared.optimizer, accelerator, batches),
        device, args.warmup, args.repeats)
    step_plain, _ = timed(lambda: plain_step(plain, plain_ref, plain_opt, batches, autocast),
                          device, args.warmup, args.repeats)

    g = torch.Generator().manual_seed(2)
    prefixes = torch.randint(3, vocab, (args.prompts, args.prefix), generator=g).tolist()
    samples = [Sample(id=str(i), text="", prefix_ids=p, suffix_ids=[0] * args.suffix)
               for i, p in enumerate(prefixes)]
    lm = LM(prepared.unwrapped, pad_token_id=0)

    def ours_generate():
        with accelerator.autocast():
            return lm.generate_suffixes(samples)

    def plain_gen():
        with torch.autocast(**autocast):
            return plain_generate(plain, prefixes, args.suffix, 0, args.gen_batch)

    plain.load_state_dict(prepared.unwrapped.state_dict())  # the same weights for generation
    gen_ours, tokens_ours = timed(ours_generate, device, 1, args.repeats)
    gen_plain, tokens_plain = timed(plain_gen, device, 1, args.repeats)
    same = sum(a == b for a, b in zip(tokens_ours, tokens_plain))
    step_tokens = args.batch * (args.prefix + args.suffix)
    gen_tokens = args.prompts * args.suffix
    result = {
        "shape": args.shape, "parameters": parameters, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "mixed_precision": args.mixed_precision,
        "lora_rank": args.lora_rank, "attention": args.attention, "batch": args.batch,
        "prefix": args.prefix, "suffix": args.suffix, "prompts": args.prompts,
        "first_loss": {"ours": ours_first, "plain": plain_first},
        "step_s": {"ours": step_ours, "plain": step_plain},
        "step_tokens_per_s": {"ours": step_tokens / step_ours, "plain": step_tokens / step_plain},
        "step_ratio": step_plain / step_ours,
        "generate_s": {"ours": gen_ours, "plain": gen_plain},
        "generate_tokens_per_s": {"ours": gen_tokens / gen_ours, "plain": gen_tokens / gen_plain},
        "generate_ratio": gen_plain / gen_ours,
        "same_generations": f"{same} of {len(samples)}",
        "versions": {"torch": torch.__version__},
    }
    if device.type == "cuda":
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
    return result


def report(r: dict) -> str:
    lines = [
        f"{r['shape']} ({r['parameters'] / 1e6:.1f}M parameters) on {r['device_name']}, weights "
        f"{r['dtype']}, mixed precision {r['mixed_precision']}, LoRA rank {r['lora_rank']}, "
        f"attention {r['attention']}",
        f"first ICU loss: ours {r['first_loss']['ours']:.5f}, plain {r['first_loss']['plain']:.5f}",
        "| | ours tokens/s | plain tokens/s | ratio (ours / plain) |",
        "|---|---|---|---|",
        f"| unlearning step, batch {r['batch']} x {r['prefix'] + r['suffix']} | "
        f"{r['step_tokens_per_s']['ours']:,.0f} | {r['step_tokens_per_s']['plain']:,.0f} | "
        f"{r['step_ratio']:.2f} |",
        f"| drop-test generation, {r['prompts']} x {r['suffix']} new tokens | "
        f"{r['generate_tokens_per_s']['ours']:,.0f} | {r['generate_tokens_per_s']['plain']:,.0f} "
        f"| {r['generate_ratio']:.2f} |",
        f"same greedy generations: {r['same_generations']}",
    ]
    if "max_memory_allocated_gib" in r:
        lines.append(f"peak GPU memory allocated: {r['max_memory_allocated_gib']:.1f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt-neo-125m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prefix", type=int, default=50)
    parser.add_argument("--suffix", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--gen-batch", type=int, default=32,
                        help="plain generation's batch (ours uses the library's default, 32)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="bf16")
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--attention", default="eager", help="eager or sdpa")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny model, float32, a few tokens, on the CPU: checks the script")
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.shape, args.device, args.mixed_precision, args.dtype = "tiny", "cpu", "no", "float32"
        args.batch, args.prefix, args.suffix, args.prompts = 2, 6, 6, 4
        args.warmup, args.repeats = 0, 1
    result = run(args)
    print(report(result))
    if args.json:
        from unlearnlm.rundir import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
