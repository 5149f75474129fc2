"""The toolkit's copy of the generated data's words equals what the generator draws and asks."""

from __future__ import annotations

from mixcore_datasets import synthetic

from mixcore.kit import shapes_vocabulary as vocabulary


def test_words_equal_the_generators():
    assert tuple(synthetic.SHAPES) == vocabulary.SHAPES
    assert tuple(synthetic.COLORS) == vocabulary.COLORS
    assert tuple(synthetic.SIZES) == vocabulary.SIZES
    assert tuple(synthetic.POSITIONS) == vocabulary.POSITIONS
    assert tuple(question for question, _ in synthetic.QUESTIONS.values()) == vocabulary.QUESTIONS
    for position, side in zip(vocabulary.POSITIONS, vocabulary.SIDES, strict=True):
        spec = synthetic.ShapeSpec("circle", "red", "small", position)
        assert all(side in caption for caption in synthetic.captions(spec))
