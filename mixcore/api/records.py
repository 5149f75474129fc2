"""Plain records that cross the plugin boundary.

Dataset plugins produce :class:`Sample` objects; model plugins turn them into features. Both sides
import these types from the core, never from each other, so a third-party dataset works with every
model and the other way round.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mixcore.api.errors import DataError

#: The placeholder a dataset plugin leaves in message text where an image belongs. Model plugins
#: replace each occurrence, in order, with their own image token span for ``Sample.images[i]``.
IMAGE_PLACEHOLDER = "<image>"

#: Roles a :class:`Message` may carry.
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation. ``content`` may hold :data:`IMAGE_PLACEHOLDER` markers."""

    role: str
    content: str


@dataclass
class Sample:
    """One training or evaluation example in model-independent form.

    ``images`` lists resolved image files in the order their placeholders appear in ``messages``.
    ``source`` and ``index`` name the data file and record the sample came from, so any error
    about it can point the user at the right place. ``dataset`` is the label of the dataset entry
    (used for per-source loss and mixture reports). ``chat_template`` is the template the config
    chose for this dataset, already loaded and checked: a dict in PaddleNLP's
    ``chat_template.json`` form, a str holding a Hugging Face-style Jinja template that renders
    the whole ``messages`` list, or None for the model's own default. Model plugins pass it to
    :func:`mixcore.kit.templates.render_segments`, which handles every form.
    """

    messages: list[Message]
    images: list[Path] = field(default_factory=list)
    source: str = ""
    index: int = -1
    dataset: str = ""
    chat_template: dict[str, Any] | str | None = None

    def where(self) -> str:
        """Human-readable origin, e.g. ``data/train.json record 12``."""
        return f"{self.source} record {self.index}" if self.source else f"record {self.index}"


@dataclass
class ModelBundle:
    """What a model plugin's ``load_model`` hook returns: everything needed to train or infer.

    ``model`` is a Paddle layer (a PaddleNLP ``PretrainedModel``), ``tokenizer`` a PaddleNLP
    tokenizer, ``processor`` the plugin's image processor (or None for text-only models).
    ``components`` maps a component label ("vision", "adapter", "language_model") to a regular
    expression matched (``re.match``) against parameter names, so the core can report trainable
    parameters per component.
    ``extras`` carries anything else the plugin's own hooks need later. The bundle a
    ``load_processing`` hook returns for an exported model has ``model`` None: only what encodes
    prompts and decodes answers.
    """

    name: str
    model: Any
    tokenizer: Any
    processor: Any = None
    components: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ShardedSource(Protocol):
    """A dataset read shard by shard, for a ``dataset.train`` entry with ``streaming: true``.

    What a dataset plugin's ``build_dataset`` hook may return instead of a sequence when the
    entry asks for streaming: nothing is read up front, and the core reads one shard at a time
    from any record position, so a stream resumes mid-shard without reading what came before
    (beyond what the shard's format makes unavoidable, such as the lines of a JSON Lines file).

    ``shards`` names every shard (a file path, usually), in a fixed order; the core shuffles the
    order per pass from the seed. :meth:`read_shard` yields ``(index, item)`` for the records of
    shard number ``shard`` whose index (0-based position in the shard, bad records counted) is at
    least ``start``, in order, each index once: ``item`` is a :class:`Sample` (its ``source`` and
    ``index`` naming the shard and the record), or a :class:`~mixcore.api.errors.DataError`
    naming them for a bad record, which the core skips or stops at by the entry's
    ``on_bad_sample``. A problem with the whole shard (missing, unreadable) is raised. Reading
    the same shard from the same ``start`` must give the same records: resumed runs rely on it.

    Optionally, ``count_records(shard) -> int | None`` says how many records (bad ones included)
    a shard holds, read without checking them (None: it cannot say cheaply). When every shard
    can say, the core reads a source missing from the processed-data cache with one process per
    core, each from its own ``start`` (so ``start`` should skip records without checking them).
    """

    shards: Sequence[str]

    def read_shard(self, shard: int, start: int = 0) -> Iterator[tuple[int, Sample | DataError]]:
        """The records of shard number ``shard`` from index ``start`` on (see the class)."""
        ...


# --- export for deployment -------------------------------------------------------------------

#: What each part of a :class:`ModelExport` computes, by role. ``embed``: ``input_ids`` ``[b, n]``
#: (int64) -> token embeddings ``[b, n, hidden]``. ``vision``: ``images`` ``[k, 3, H, W]``
#: (float32) -> image features ``[k, tokens_per_image, hidden]``. ``language`` (decoder-only
#: models): ``inputs_embeds`` ``[b, n, hidden]`` -> logits ``[b, n, vocab]``, causal, so a row
#: padded on the right keeps the logits of its real positions; it may take ``prompt_length``
#: ``[1]`` (int64) as a second input, for a model whose attention over the prompt is not
#: causal (the answer's part must be). ``encoder`` (encoder-decoder
#: models): ``inputs_embeds`` -> encoder states ``[b, n, d]``; ``decoder``: ``decoder_input_ids``
#: ``[b, m]`` and ``encoder_hidden_states`` -> logits ``[b, m, vocab]``.
EXPORT_ROLES: dict[str, tuple[str, ...]] = {
    "causal": ("embed", "vision", "language"),
    "encoder_decoder": ("embed", "vision", "encoder", "decoder"),
}


@dataclass(frozen=True)
class TensorSpec:
    """One input of an exported part: its name, shape (None where any size is allowed) and
    dtype (``"float32"``, ``"int64"``)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class ExportPart:
    """One Paddle layer to save as a static inference model: ``layer(*inputs)`` returns one
    tensor, as its ``role`` in :data:`EXPORT_ROLES` says. A fixed size in an input's shape is
    what the exported program takes (the runtime pads a fixed sequence length on the right);
    ``None`` is left dynamic."""

    role: str
    layer: Any
    inputs: tuple[TensorSpec, ...]


@dataclass
class ModelExport:
    """What a model plugin's ``export_model`` hook returns: the parts, and what the runtime's
    greedy loop needs to know about the model.

    ``decoding`` is ``"causal"`` or ``"encoder_decoder"`` (its parts are those of
    :data:`EXPORT_ROLES`); images' features are written over the ``tokens_per_image`` tokens
    ``image_token_id`` of each image, in order; decoding stops at any of ``stop_ids``;
    ``vocab_size`` keeps ids the tokenizer cannot decode from being chosen;
    ``decoder_start_token_id`` starts an encoder-decoder's answer; ``max_length`` is the longest
    prompt plus answer the export takes (the length a fixed-length part was traced at)."""

    parts: list[ExportPart]
    decoding: str
    image_token_id: int | None
    tokens_per_image: int
    stop_ids: tuple[int, ...]
    vocab_size: int | None = None
    decoder_start_token_id: int | None = None
    max_length: int | None = None
    notes: list[str] = field(default_factory=list)
