"""Memory of an unlearning step in each training mode: peak resident memory of the process, and
the bytes per parameter held by weights, gradients, optimiser state and the reference model.

Usage: .venv/bin/python benchmarks/memory.py [--model smollm2-135m] [--modes full,lora]
       [--batch 8] [--tokens 100] [--steps 2] [--json OUT.json]

``--model random-small`` builds a 4-block Llama with random weights (about 5M parameters) for the
modes that are too slow on a CPU with the real model (bfloat16 weights here, for one).

Each mode runs in a fresh process (so that its peak is its own): the model is loaded and prepared
by ``unlearnlm.train.models.prepare_training``, exactly as ``unlearnlm unlearn`` does, then takes
``--steps`` ICU steps (forget batch + analogous batch, the KL term reading the reference, Adam)
on random tokens. Modes:

  full        every weight trains; the reference is a whole copy
  last2       the last 2 blocks train (--trainable-layers 2); the reference shares the rest
  lora        LoRA rank 8 on peft's default modules; the reference is the adapter switched off
  full-ckpt   full, with gradient checkpointing
  lora-ckpt   lora, with gradient checkpointing
  full-bf16   full on bfloat16 weights (--dtype bfloat16; slow on CPUs without bf16 support)
  lora-bf16   lora on bfloat16 weights

Printed per mode: peak RSS of the process, its growth over the loaded-but-idle process, and the
counted bytes per parameter (weights, gradients, optimiser state, reference's own tensors).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

MODES = {
    "full": {},
    "last2": {"trainable_layers": 2},
    "lora": {"lora_rank": 8},
    "full-ckpt": {"gradient_checkpointing": True},
    "lora-ckpt": {"lora_rank": 8, "gradient_checkpointing": True},
    "full-bf16": {"dtype": "bfloat16"},
    "lora-bf16": {"lora_rank": 8, "dtype": "bfloat16"},
}
ICU = {"forget_ga": 1.0, "analogous_nll": 0.5, "analogous_kl": 1.0}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(mode: str, model_spec: str, batch: int, tokens: int, steps: int) -> dict:
    """Load, prepare and step one mode in this process; the figures of the module docstring."""
    import torch

    from unlearnlm.data.batches import collate
    from unlearnlm.lm.loading import load_model
    from unlearnlm.methods.losses import combined_loss
    from unlearnlm.settings import UnlearnConfig
    from unlearnlm.train.models import DTYPES, make_accelerator, prepare_training, state_bytes

    settings = UnlearnConfig(**MODES[mode])
    rss_start = peak_rss_bytes()
    model, _, _ = load_model(model_spec, dtype=DTYPES[settings.dtype])
    parameters = sum(p.numel() for p in model.parameters())
    prepared = prepare_training(
        model, make_accelerator(cpu=True), settings, reference=True,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-5, betas=(0.9, 0.98)))
    rss_loaded = peak_rss_bytes()
    generator = torch.Generator().manual_seed(0)
    vocab = prepared.unwrapped.config.vocab_size
    seconds = []
    for _ in range(steps):
        rows = torch.randint(0, vocab, (2, batch, tokens), generator=generator).tolist()
        parts = {name: collate(r, [1] * batch, 0, torch.device("cpu"))
                 for name, r in zip(("forget", "analogous"), rows)}
        clock = time.perf_counter()
        loss, _ = combined_loss(ICU, prepared.model, prepared.reference, parts)
        prepared.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        prepared.optimizer.step()
        seconds.append(time.perf_counter() - clock)
    counted = state_bytes(prepared)
    return {
        "mode": mode, "model": model_spec, "parameters": parameters,
        "trainable": prepared.trainable_parameters, "batch": batch, "tokens": tokens,
        "peak_rss": peak_rss_bytes(), "rss_before_load": rss_start, "rss_loaded": rss_loaded,
        "bytes": counted, "bytes_per_parameter": {k: v / parameters for k, v in counted.items()},
        "seconds_per_step": min(seconds),
    }


def random_small(folder: str) -> str:
    """A 4-block Llama with random weights and a 4096-token vocabulary, saved in ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(4096)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t1",
                            pad_token="t1").save_pretrained(folder)
    return folder


def _child(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--batch",
           str(args.batch), "--tokens", str(args.tokens), "--steps", str(args.steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    per = r["bytes_per_parameter"]
    total = sum(per.values())
    gib = 1024 ** 3
    return (f"| {r['mode']} | {r['trainable']:,} | {r['peak_rss'] / gib:.2f} | "
            f"{(r['peak_rss'] - r['rss_before_load']) / gib:.2f} | {per['weights']:.2f} | "
            f"{per['gradients']:.2f} | {per['optimizer']:.2f} | {per['reference']:.2f} | "
            f"{total:.2f} | {r['seconds_per_step']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--modes", default="full,last2,lora,full-ckpt,lora-ckpt")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.batch, args.tokens, args.steps)))
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    name = args.model
    with tempfile.TemporaryDirectory() as folder:
        if args.model == "random-small":
            args.model = random_small(folder)
        results = [_child(mode, args) for mode in modes]
    print(f"{name}: {results[0]['parameters']:,} parameters, ICU step on {args.batch} x "
          f"{args.tokens} tokens (forget + analogous batch), Adam")
    print("| mode | trainable | peak RSS GiB | growth GiB | weights B/p | grads B/p | "
          "Adam B/p | reference B/p | state B/p | s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_row(r))
    if args.json:
        from unlearnlm.rundir import write_json

        write_json(args.json, {"results": results})


if __name__ == "__main__":
    main()
