"""Training: the unlearning loop, its drop test, checkpoints, and memorisation fine-tuning."""
