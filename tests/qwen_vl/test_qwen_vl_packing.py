"""MIXToken packing on the real tiny Qwen-VL: packed samples train exactly as they do alone."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from mixcore_qwen_vl.plugin import plugin
from PIL import Image

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.kit.collation import pad_batch, to_tensors
from mixcore.kit.packing import pack_features

encode_sample, sample_length, collate = plugin.encode, plugin.length, plugin.collate

IGNORE = -100


@pytest.fixture(scope="module")
def bundle():
    paddle.seed(7)
    built = plugin.load("qwen_vl/tiny", {"random_init": True})
    # Dropout would make two forward passes differ for reasons that have nothing to do with
    # packing; the tiny preset has none, which this guards.
    assert float(built.model.config.lm_config().attn_dropout_prob) == 0.0
    return built


def _picture(path, colour):
    Image.new("RGB", (40, 40), colour).save(path)
    return path


@pytest.fixture
def samples(tmp_path):
    red = _picture(tmp_path / "red.png", (220, 30, 30))
    blue = _picture(tmp_path / "blue.png", (30, 30, 220))
    return [
        Sample(
            [Message("user", f"{IMAGE_PLACEHOLDER}\nWhat colour?"), Message("assistant", "red")],
            [red],
            index=0,
        ),
        # Text only, between two image samples: its segment contributes no image.
        Sample([Message("user", "Say hi."), Message("assistant", "hi there")], index=1),
        Sample(
            [
                Message("user", f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}\nColours?"),
                Message("assistant", "blue and red"),
                Message("user", "Sure?"),
                Message("assistant", "yes"),
            ],
            [blue, red],
            index=2,
        ),
    ]


def _token_losses(bundle, batch):
    out = bundle.model(**batch, return_dict=True)
    logits = out.logits.astype("float32")
    labels = batch["labels"]
    losses = F.cross_entropy(logits, labels.unsqueeze(-1), reduction="none", ignore_index=IGNORE)
    return out.loss, losses.squeeze(-1).numpy(), labels.numpy()


def _per_sample(losses, labels, rows_and_spans):
    means = []
    for row, start, end in rows_and_spans:
        keep = labels[row, start:end] != IGNORE
        means.append(float(losses[row, start:end][keep].mean()))
    return np.array(means)


def _gradients(bundle, batch):
    model = bundle.model
    model.clear_gradients()
    loss = model(**batch, return_dict=True).loss
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    model.clear_gradients()
    return grads


def test_packed_losses_and_gradients_equal_unpacked(bundle, samples):
    features = [encode_sample(s, bundle, 512) for s in samples]
    unpacked = to_tensors(collate(features, bundle))
    packed = to_tensors(collate([pack_features(features)], bundle))
    length = packed["input_ids"].shape[1]
    # The model attends per segment: the batch carries segment ids, no len x len mask.
    assert packed["segment_ids"].shape == [1, length]
    assert packed["attention_mask"].shape == [1, length]
    assert packed["images"].shape[0] == unpacked["images"].shape[0] == 3

    bundle.model.train()
    loss_u, tok_u, lab_u = _token_losses(bundle, unpacked)
    loss_p, tok_p, lab_p = _token_losses(bundle, packed)
    lengths = [len(f["input_ids"]) for f in features]
    starts = np.cumsum([0, *lengths[:-1]])
    alone = _per_sample(tok_u, lab_u, [(r, 0, n) for r, n in enumerate(lengths)])
    together = _per_sample(
        tok_p, lab_p, [(0, s, s + n) for s, n in zip(starts, lengths, strict=True)]
    )
    assert np.max(np.abs(alone - together)) <= 1e-5
    # Every sample has the same number of trained tokens either way, so the batch loss agrees.
    assert abs(float(loss_u) - float(loss_p)) <= 1e-5

    grads_u = _gradients(bundle, unpacked)
    grads_p = _gradients(bundle, packed)
    assert grads_u.keys() == grads_p.keys() and len(grads_u) > 10
    worst = max(float(np.max(np.abs(grads_u[n] - grads_p[n]))) for n in grads_u)
    assert worst <= 1e-5


def test_naive_concatenation_would_leak_between_samples(bundle, samples):
    """The mask matters: with a plain causal mask, later samples see earlier ones."""
    features = [encode_sample(s, bundle, 512) for s in samples]
    packed = pack_features(features)
    proper = to_tensors(collate([packed], bundle))
    naive = dict(proper)
    naive["attention_mask"] = paddle.ones(proper["input_ids"].shape, dtype="int64")
    naive.pop("position_ids")
    naive.pop("segment_ids")
    bundle.model.eval()
    _, tok_ok, labels = _token_losses(bundle, proper)
    _, tok_naive, _ = _token_losses(bundle, naive)
    first = len(features[0]["input_ids"])
    keep = labels[0] != IGNORE
    # The first sample is unaffected (nothing precedes it); the rest differ.
    assert np.allclose(
        tok_ok[0, :first][keep[:first]], tok_naive[0, :first][keep[:first]], atol=1e-5
    )
    assert np.max(np.abs(tok_ok[0, first:] - tok_naive[0, first:])) > 1e-3


def test_segment_attention_equals_the_dense_block_diagonal_mask(bundle, samples):
    """Two packed rows of unequal length (so one is padded), segment path vs dense mask path:
    the same logits and gradients."""
    features = [encode_sample(s, bundle, 512) for s in samples]
    rows = [pack_features(features[:2]), pack_features(features[2:])]
    by_segments = to_tensors(collate(rows, bundle))
    dense = to_tensors(pad_batch(rows, bundle.tokenizer.pad_token_id, packed_attention="mask"))
    assert "segment_ids" not in dense and dense["attention_mask"].ndim == 4
    bundle.model.train()
    logits_s = bundle.model(**by_segments, return_dict=True).logits.numpy()
    logits_d = bundle.model(**dense, return_dict=True).logits.numpy()
    real = by_segments["segment_ids"].numpy() > 0
    assert np.max(np.abs(logits_s[real] - logits_d[real])) <= 1e-5
    grads_s, grads_d = _gradients(bundle, by_segments), _gradients(bundle, dense)
    assert grads_s.keys() == grads_d.keys()
    assert max(float(np.max(np.abs(grads_s[n] - grads_d[n]))) for n in grads_s) <= 1e-5


def test_labels_never_cross_a_sample_boundary(bundle, samples):
    features = [encode_sample(s, bundle, 512) for s in samples]
    packed = pack_features(features)
    ends = np.cumsum([len(f["input_ids"]) for f in features]) - 1
    assert all(packed["labels"][end] == IGNORE for end in ends)
    segments, positions = packed["segment_ids"], packed["position_ids"]
    assert list(np.unique(segments)) == [1, 2, 3]
    for s in (1, 2, 3):
        assert list(positions[segments == s]) == list(range(int((segments == s).sum())))


def test_sample_length_counts_image_tokens_without_reading_images(bundle, samples, tmp_path):
    for sample in samples:
        assert sample_length(sample, bundle) == len(encode_sample(sample, bundle, 512)["input_ids"])
    # A missing image does not stop measuring (images are not read), only preprocessing.
    missing = Sample(samples[0].messages, [tmp_path / "gone.png"], index=9)
    assert sample_length(missing, bundle) == sample_length(samples[0], bundle)


def _long_question(words: int, image) -> Sample:
    return Sample(
        [
            Message("user", "word " * words + f"{IMAGE_PLACEHOLDER}\nWhat colour?"),
            Message("assistant", "red"),
        ],
        [image],
        source="data.json",
        index=5,
    )


@pytest.mark.parametrize(("words", "where"), [(15, "inside"), (19, "before")])
def test_truncation_never_cuts_into_or_drops_an_image(bundle, samples, words, where):
    sample = _long_question(words, samples[0].images[0])
    assert sample_length(sample, bundle) > 96
    with pytest.raises(DataError, match=rf"data.json record 5: .* fall {where} image 1"):
        encode_sample(sample, bundle, 96)


def test_truncation_that_leaves_no_reply_is_an_error(bundle):
    sample = Sample(
        [Message("user", "word " * 40), Message("assistant", "red")], source="d.json", index=2
    )
    with pytest.raises(DataError, match=r"d\.json record 2: no reply token is left"):
        encode_sample(sample, bundle, 96)
    kept = encode_sample(sample, bundle, 256)
    assert (kept["labels"] != IGNORE).sum() > 0


def test_truncation_cuts_text_after_the_last_image(bundle, samples):
    sample = Sample(
        [
            Message("user", f"{IMAGE_PLACEHOLDER}\nWhat colour?"),
            Message("assistant", "red " * 40),
        ],
        [samples[0].images[0]],
    )
    features = encode_sample(sample, bundle, 96)
    assert len(features["input_ids"]) == 96 and features["images"].shape[0] == 1
    assert (features["labels"] != IGNORE).sum() > 0
