"""Plain records that cross the plugin boundary.

Dataset plugins produce :class:`Sample` objects; model plugins turn them into features. Both sides
import these types from the core, never from each other, so a third-party dataset works with every
model and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    ``extras`` carries anything else the plugin's own hooks need later.
    """

    name: str
    model: Any
    tokenizer: Any
    processor: Any = None
    components: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
