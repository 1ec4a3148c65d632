"""Time one training step of SmolLM2-135M on the CPU: all parameters, frozen embeddings, the last
10 blocks only, and bf16 autocast (all parameters), side by side in one run.

Usage: .venv/bin/python benchmarks/cpu_train_step.py [--batch 8] [--tokens 72] [--repeats 3]
Prints the median seconds per step (forward + backward + AdamW) of each setting.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unlearnlm.lm.loading import load_model, train_last_layers


def time_steps(setting: str, batch: int, tokens: int, repeats: int) -> float:
    model, _, _ = load_model("smollm2-135m")
    if setting == "frozen embeddings":
        model.get_input_embeddings().weight.requires_grad_(False)
    elif setting == "last 10 blocks":
        train_last_layers(model, 10)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens))
    bf16 = setting == "bf16 autocast"
    times = []
    for _ in range(repeats + 1):  # the first step warms up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=72)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-bf16", action="store_true", help="bf16 can be very slow")
    args = parser.parse_args()
    settings = ["all parameters", "frozen embeddings", "last 10 blocks"]
    if not args.skip_bf16:
        settings.append("bf16 autocast")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} x {args.tokens} tokens")
    for setting in settings:
        print(f"{setting:20s} {time_steps(setting, args.batch, args.tokens, args.repeats):6.2f} s")


if __name__ == "__main__":
    main()
