"""Image features written into a language model's input embeddings.

Vision-language models that mark each image with a run of placeholder tokens (Qwen-VL's
``<imgpad>``, LLaVA's ``<image>``, newer BLIP-2's image token) all do the same thing in their
forward pass: embed the text, encode the images, and overwrite the placeholder positions with
the image features, in reading order. Paddle is imported only when the function runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixcore.api.errors import MixcoreError

__all__ = ["ImageTokenMismatchError", "splice_image_features"]


class ImageTokenMismatchError(MixcoreError, ValueError):
    """The image placeholder tokens in ``input_ids`` do not match the images passed with them."""


def splice_image_features(
    embeds: Any,
    input_ids: Any,
    images: Any | None,
    encode_images: Callable[[Any], Any],
    *,
    token_id: int,
    tokens_per_image: int,
    hint: str = "",
) -> Any:
    """``embeds`` ``[batch, len, hidden]`` with the features of ``images`` written over the
    positions of ``input_ids`` that hold ``token_id``.

    ``encode_images(images)`` gives ``tokens_per_image`` feature vectors per image (any shape
    whose last axis is ``hidden``); image ``i`` fills the ``i``-th run of placeholders, counting
    through the batch row by row. A count of placeholders that is not ``tokens_per_image`` times
    the number of images is an :class:`ImageTokenMismatchError` (``hint`` says how to fix it);
    without images nothing is encoded.
    """
    import paddle

    positions = paddle.nonzero((input_ids == token_id).flatten())
    found = int(positions.shape[0])
    n_images = 0 if images is None else int(images.shape[0])
    if found != n_images * tokens_per_image:
        raise ImageTokenMismatchError(
            f"input_ids hold {found} image placeholder tokens (id {token_id}) but {n_images} "
            f"image(s) need {n_images * tokens_per_image}" + (f": {hint}" if hint else "")
        )
    if n_images == 0:
        return embeds
    hidden = embeds.shape[-1]
    features = encode_images(images).reshape([-1, hidden]).astype(embeds.dtype)
    flat = paddle.scatter(
        embeds.reshape([-1, hidden]), positions.squeeze(-1), features, overwrite=True
    )
    return flat.reshape(embeds.shape)
