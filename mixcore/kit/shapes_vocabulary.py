"""The words of the generated shapes data (``synthetic_shapes`` of the datasets plugin), for
model plugins that generate a tiny tokenizer covering it: a tiny model learns the data faster
when each attribute is one token. Plugins cannot import the datasets plugin, so the words live
here; ``tests/core/test_shapes_vocabulary.py`` keeps them equal to the generator's.
"""

from __future__ import annotations

__all__ = ["COLORS", "POSITIONS", "QUESTIONS", "SHAPES", "SIDES", "SIZES", "answers"]

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
#: How captions place the shape.
SIDES = ("on the left", "on the right", "at the top", "at the bottom")
QUESTIONS = (
    "What shape is in the picture?",
    "What color is the shape?",
    "Is the shape small or large?",
    "Where is the shape in the picture: left, right, top or bottom?",
)


def answers() -> tuple[str, ...]:
    """Every one-word answer the data has."""
    return (*SHAPES, *COLORS, *SIZES, *POSITIONS)
