"""Exact match forgives case, spacing and final punctuation, and nothing else."""

from __future__ import annotations

import pytest

from mixcore.kit.scoring import exact_match, exact_match_accuracy, normalize_answer


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("Circle.", "circle"),
        ("  RED  ", "red"),
        ("left!", "Left"),
        ("圆形。", "圆形"),
        ("a  b", "a b"),
    ],
)
def test_superficial_differences_still_match(prediction, reference):
    assert exact_match(prediction, reference)


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [("a circle", "circle"), ("circles", "circle"), ("", "red"), ("red.blue", "red")],
)
def test_different_answers_do_not_match(prediction, reference):
    assert not exact_match(prediction, reference)


def test_normalize_keeps_inner_punctuation():
    assert normalize_answer(" Top-Left ?! ") == "top-left"


def test_accuracy_is_the_fraction_of_matches():
    assert exact_match_accuracy(["Red", "blue", "x"], ["red", "blue", "green"]) == 2 / 3


@pytest.mark.parametrize(("predictions", "references"), [(["a"], ["a", "b"]), ([], [])])
def test_accuracy_needs_paired_non_empty_lists(predictions, references):
    with pytest.raises(ValueError):
        exact_match_accuracy(predictions, references)
