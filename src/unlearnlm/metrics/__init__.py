"""Per-sample metrics: MA, EL_n, BLEU, BERTScore, entropy, perplexity."""
