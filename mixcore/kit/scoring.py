"""Exact-match scoring of short answers (single words such as the synthetic dataset's).

Generated text often differs from the reference only in case, spacing or a final full stop
("Circle." vs "circle"); those differences say nothing about whether the model knows the answer,
so they are normalised away before comparing. Anything else (extra words, synonyms) counts as
wrong, which keeps the metric strict and cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["exact_match", "exact_match_accuracy", "normalize_answer"]

#: Punctuation stripped from the end of an answer (ASCII and full-width CJK forms).
TRAILING_PUNCTUATION = ".,!?;:。，！？；：、"


def normalize_answer(text: str) -> str:
    """Case-fold, collapse whitespace, and drop trailing punctuation."""
    words = " ".join(text.split()).casefold()
    return words.rstrip(TRAILING_PUNCTUATION).rstrip()


def exact_match(prediction: str, reference: str) -> bool:
    """Whether ``prediction`` equals ``reference`` after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def exact_match_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of exact matches; the sequences must have the same, non-zero length."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references; "
            "they must pair up one to one"
        )
    if not references:
        raise ValueError("no references to score against")
    hits = sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)
