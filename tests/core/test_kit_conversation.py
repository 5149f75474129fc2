"""The toolkit's conversation encoder: templates -> ids, image spans, pre-shifted labels, cuts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixcore.api import IGNORE_INDEX, IMAGE_PLACEHOLDER, DataError, Message, Sample
from mixcore.kit.conversation import ConversationEncoder, ImageSlot, shifted_labels

PAD, IMG_START, IMG_END = 900, 901, 902


def chars(text: str) -> list[int]:
    """A tokenizer with one token per character: every id is readable back."""
    return [ord(c) for c in text]


def text_of(ids) -> str:
    return "".join(chr(i) if i < 900 else {PAD: "#", IMG_START: "[", IMG_END: "]"}[i] for i in ids)


def picture(number: int) -> ImageSlot:
    prefix = tuple(chars(f"P{number}:"))
    span = (IMG_START, PAD, PAD, IMG_END)
    return ImageSlot(prefix + span, len(prefix), len(prefix) + len(span))


def sample(*turns: tuple[str, str], images: int = 0) -> Sample:
    messages = []
    for user, reply in turns:
        messages += [Message("user", user), Message("assistant", reply)]
    return Sample(
        messages, images=[Path(f"{i}.png") for i in range(images)], source="d.json", index=3
    )


SIMPLE = {"conversation": ["U:{{user}}\n", "A:{{bot}}\n"]}


def test_labels_are_the_next_reply_token_and_end_with_ignore():
    encoder = ConversationEncoder(chars, default_template=SIMPLE)
    encoded = encoder.encode(sample(("hi", "yo")))
    assert text_of(encoded.input_ids) == "U:hi\nA:yo\n"
    # Only the reply "A:yo\n" is trained: each label is the token after it, when that token
    # belongs to the reply.
    reply_start = len("U:hi\n")
    for t, label in enumerate(encoded.labels):
        if t + 1 >= reply_start and t + 1 < len(encoded.input_ids):
            assert label == encoded.input_ids[t + 1]
        else:
            assert label == IGNORE_INDEX
    assert encoded.labels[-1] == IGNORE_INDEX
    assert len(encoded.labels) == len(encoded.input_ids)


def test_shifted_labels_of_a_single_token_is_ignore():
    assert shifted_labels([5], [True]) == [IGNORE_INDEX]
    assert shifted_labels([5, 6, 7], [False, True, False]) == [6, IGNORE_INDEX, IGNORE_INDEX]


def test_image_slots_replace_placeholders_and_spans_point_at_them():
    encoder = ConversationEncoder(chars, picture, default_template=SIMPLE)
    encoded = encoder.encode(sample((f"{IMAGE_PLACEHOLDER}what?", "dot"), images=1))
    assert text_of(encoded.input_ids) == "U:P1:[##]what?\nA:dot\n"
    ((start, end),) = encoded.image_spans
    assert text_of(encoded.input_ids[start:end]) == "[##]"


@pytest.mark.parametrize(
    ("numbering", "expected"),
    [("conversation", ["P1", "P2", "P3"]), ("message", ["P1", "P2", "P1"])],
)
def test_images_are_numbered_across_the_sample_or_per_message(numbering, expected):
    encoder = ConversationEncoder(
        chars, picture, image_numbering=numbering, default_template=SIMPLE
    )
    two_then_one = sample(
        (f"{IMAGE_PLACEHOLDER}{IMAGE_PLACEHOLDER}same?", "no"),
        (f"{IMAGE_PLACEHOLDER}and this?", "red"),
        images=3,
    )
    text = text_of(encoder.encode(two_then_one).input_ids)
    assert [text[i : i + 2] for i in range(len(text)) if text[i] == "P"] == expected


def test_bos_is_never_trained_and_end_of_turn_is():
    encoder = ConversationEncoder(chars, default_template=SIMPLE, bos_ids=[1], end_of_turn_ids=[2])
    encoded = encoder.encode(sample(("a", "b")))
    assert encoded.input_ids[0] == 1 and encoded.input_ids[-1] == 2
    assert encoded.labels[-2] == 2  # the stop token is a target: the model learns to stop
    assert 1 not in encoded.labels


def test_a_cut_never_falls_into_an_image():
    encoder = ConversationEncoder(chars, picture, default_template=SIMPLE)
    long = sample((f"question {IMAGE_PLACEHOLDER}", "answer"), images=1)
    length = encoder.length(long)
    with pytest.raises(DataError, match=r"d\.json record 3: .*inside image 1"):
        encoder.encode(long, max_length=len("U:question P1:[#"))
    with pytest.raises(DataError, match="before image 1"):
        encoder.encode(long, max_length=len("U:ques"))
    cut = encoder.encode(long, max_length=length - 3)
    assert len(cut.input_ids) == length - 3 and cut.image_spans[0][1] <= length - 3


def test_a_cut_that_leaves_no_reply_is_an_error():
    encoder = ConversationEncoder(chars, default_template=SIMPLE)
    with pytest.raises(DataError, match="no reply token is left within max_length 4"):
        encoder.encode(sample(("a long question", "x")), max_length=4)


def test_placeholders_and_images_must_pair_up():
    encoder = ConversationEncoder(chars, picture, default_template=SIMPLE)
    with pytest.raises(DataError, match=r"record 3: 1 image placeholder\(s\) but 2 image\(s\)"):
        encoder.encode(sample((f"{IMAGE_PLACEHOLDER}?", "x"), images=2))
    text_only = ConversationEncoder(chars, default_template=SIMPLE)
    with pytest.raises(DataError, match="this model takes no images"):
        text_only.encode(sample((f"{IMAGE_PLACEHOLDER}?", "x"), images=1))


def test_the_samples_own_template_wins_over_the_default():
    encoder = ConversationEncoder(chars, default_template=SIMPLE)
    own = sample(("q", "r"))
    own.chat_template = {"conversation": ["Q={{user}};", "R={{bot}};"]}
    assert text_of(encoder.encode(own).input_ids) == "Q=q;R=r;"


def test_no_template_means_chatml():
    encoded = ConversationEncoder(chars).encode(sample(("q", "r")))
    assert "<|im_start|>assistant\nr<|im_end|>" in text_of(encoded.input_ids)
