"""Hook specifications: the whole contract between mixcore and its plugins.

Hooks come in two kinds, grouped here by when they run.

*Contribution hooks* run once per command while the registry is built. A plugin declares what it
brings by calling the ``register`` callable it is given; the core records which plugin registered
what and validates every entry against a JSON Schema. They must stay cheap: no Paddle, PaddleNLP or
Pillow import, because ``mixcore plugins list`` and ``mixcore validate`` call them.

*Dispatch hooks* do the work for one named model or dataset. Each is ``firstresult``: pluggy calls
the implementations from the most recently registered plugin to the first and stops at the first
non-None result. A plugin returns None for names it does not own, so several plugins can implement
the same hook side by side. The core's defaults are registered with ``trylast`` and so run only when
no plugin answered. Any plugin may also implement a hook as a wrapper (``wrapper=True``) to observe
or adjust another plugin's result.

Heavy imports belong inside hook bodies, never at the top of a plugin's entry module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mixcore.api.markers import hookspec

if TYPE_CHECKING:
    from mixcore.api.parallel import ParallelPlan
    from mixcore.api.records import ModelBundle, ModelExport, Sample

# --------------------------------------------------------------------------------------------------
# Contribution hooks: called once per command, while the registry is built.
# --------------------------------------------------------------------------------------------------


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Declare the models this plugin can load.

    Called once per command while the registry is built, once for each plugin on its own, so a
    failure marks only that plugin broken.

    :param register: call it once per model with keyword arguments:

        - ``name`` (str, required): the model's name, e.g. ``"qwen_vl"``; lower case, digits, ``_``.
        - ``description`` (str, required): one line shown by ``mixcore plugins list``.
        - ``options_schema`` (dict): JSON Schema (Draft 2020-12) of the model's options, the
          ``model_options`` object of a config. Defaults to an empty object schema.
        - ``capabilities`` (dict[str, bool]): which of ``inference``, ``sft``, ``lora``,
          ``pretrain``, ``packing``, ``tensor_parallel``, ``pipeline_parallel``, ``deploy`` work.
          The registry refuses a claim the plugin's implemented hooks cannot back.
        - ``aliases`` (list[str]): other names a config's ``model_name_or_path`` may use for this
          model, such as PaddleMIX's ``"qwen-vl/qwen-vl-chat-7b"`` or a preset like
          ``"qwen_vl/tiny"``.
        - ``model_types`` (list[str]): ``model_type`` values in a checkpoint folder's
          ``config.json`` that this model loads.

    :return: nothing; the result is ignored.
    """


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Declare the dataset kinds this plugin can build.

    Called once per command while the registry is built, once for each plugin on its own.

    :param register: call it once per dataset kind with keyword arguments:

        - ``name`` (str, required): the value of ``dataset.train[i].name`` that selects it, e.g.
          ``"chatml_dataset"``.
        - ``description`` (str, required): one line for ``mixcore plugins list``.
        - ``options_schema`` (dict): JSON Schema (Draft 2020-12, ``type: object``) of the options
          this dataset reads from its entry in ``dataset.train`` / ``dataset.eval``. The core's
          entry fields (``name``, ``weight``, ``num_samples``, ...) are added by the core; list
          only your own (``data_files``, ``chat_template``, ...).

    :return: nothing; the result is ignored.
    """


# --------------------------------------------------------------------------------------------------
# Dispatch hooks: model side. Return None for a model you do not own.
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def check_model_options(model_name: str, source: str, options: dict[str, Any]) -> list[str] | None:
    """Say what is wrong with a model's options that its option schema cannot say.

    Called by ``mixcore validate``, and at the start of ``mixcore train``, ``infer`` and
    ``merge-lora`` before Paddle is imported, once the options passed the model's
    ``options_schema``; a problem found here is reported like a schema problem, at
    ``$.model_options`` (exit code 2), instead of failing once the model loads. Typical checks:
    a preset that has no pretrained weights unless ``random_init`` is set, an option that does
    not fit the checkpoint folder's ``config.json``. Stops at the first non-None result.

    It must stay cheap: no Paddle, PaddleNLP or Pillow import, no weights read. It may look at
    the small files of ``source`` when it is a folder.

    :param model_name: the registered model name the config resolved to.
    :param source: the config's ``model_name_or_path`` (a checkpoint folder, absolute, or one of
        the model's aliases), or the ``--model`` of ``infer`` / ``merge-lora``.
    :param options: the model's options, already valid against its ``options_schema``.
    :return: the problems, each a sentence for the user that says what to change (an empty list
        when the options are fine), or None when ``model_name`` is not yours.
    """


@hookspec(firstresult=True)
def load_model(model_name: str, source: str, options: dict[str, Any]) -> ModelBundle | None:
    """Load a model with its tokenizer and image processor.

    Called by ``mixcore train``, ``infer`` and ``merge-lora`` once the config names a model this
    plugin registered. Stops at the first non-None result.

    :param model_name: the registered model name the run resolved to.
    :param source: the config's ``model_name_or_path``: a local checkpoint folder, or one of the
        model's aliases (a preset such as ``"qwen_vl/tiny"``).
    :param options: the config's ``model_options``, already validated against the model's schema.
    :return: a :class:`mixcore.api.records.ModelBundle`, or None when ``model_name`` is not yours.
    """


@hookspec(firstresult=True)
def preprocess_sample(
    model_name: str, sample: Sample, bundle: ModelBundle, max_length: int
) -> dict[str, Any] | None:
    """Turn one model-independent sample into the model's features.

    Called for every sample a dataset yields, usually in a data-loader worker. Stops at the first
    non-None result.

    :param model_name: the registered model name of the run.
    :param sample: messages with image placeholders, image files, and where it came from.
    :param bundle: what ``load_model`` returned (tokenizer and processor live there).
    :param max_length: the token budget per sample, counting image tokens. A sample whose image
        span would not fit must raise :class:`mixcore.api.errors.DataError`, never be cut through.
    :return: a dict of numpy arrays (at least ``input_ids`` and ``labels``, with ``-100`` on
        positions that carry no loss), or None when ``model_name`` is not yours. ``labels[t]`` is
        the target of the logits at position ``t`` (already shifted), and the last label of a
        sample is -100: per-source loss and packing rely on both. Images go in arrays whose
        first axis counts images, in the order of their spans in ``input_ids``.
    """


@hookspec(firstresult=True)
def sample_length(model_name: str, sample: Sample, bundle: ModelBundle) -> int | None:
    """Count the tokens a sample takes after preprocessing, image tokens included, fast.

    Called once per sample before training when MIXToken packing is on or ``overlong_policy``
    is ``drop`` / ``error``, to plan packs and find over-long samples without reading images.
    Stops at the first non-None result. Without an implementation the core runs
    ``preprocess_sample`` (images and all) to measure; a model claiming ``packing`` must
    implement it.

    :param model_name: the registered model name of the run.
    :param sample: the sample to measure.
    :param bundle: what ``load_model`` returned.
    :return: the untruncated length in tokens, or None when ``model_name`` is not yours. A sample
        that cannot be encoded raises :class:`mixcore.api.errors.DataError`.
    """


@hookspec(firstresult=True)
def collate_batch(
    model_name: str, features: Sequence[dict[str, Any]], bundle: ModelBundle
) -> dict[str, Any] | None:
    """Stack a list of preprocessed samples into one batch of numpy arrays.

    Called by the data loader for every batch. Stops at the first non-None result; the core's
    default pads ``input_ids`` with the tokenizer's pad id, ``labels`` with -100, builds
    ``attention_mask``, and stacks every other key that has the same shape in every sample.

    :param model_name: the registered model name of the run.
    :param features: what ``preprocess_sample`` returned, one dict per sample, or with
        MIXToken packing one dict per *pack* (see :mod:`mixcore.kit.packing`): the features of
        several samples concatenated, plus ``segment_ids`` (1, 2, ... per sample, per token) and
        ``position_ids`` (restarting at 0 in every sample). A model claiming ``packing`` must
        turn ``segment_ids`` into attention that keeps each sample to itself
        (:func:`mixcore.kit.packing.block_diagonal_causal_mask`) and pass the position ids on.
    :param bundle: what ``load_model`` returned.
    :return: a dict of numpy arrays, which the data loader turns into the tensors the model's
        ``forward`` takes, or None to defer. Not Paddle tensors: collators run in loader worker
        processes, where creating them can crash the worker. Row ``r`` of ``labels`` must hold
        ``features[r]["labels"]`` from column 0 (right padding), which is how the core lines up
        per-source losses.
    """


@hookspec(firstresult=True)
def generate(
    model_name: str,
    bundle: ModelBundle,
    prompts: Sequence[Sample],
    max_new_tokens: int,
    num_beams: int,
) -> list[str] | None:
    """Answer a batch of prompts: greedy decoding, or beam search with ``num_beams`` > 1.

    Called by ``mixcore infer`` (one prompt, or a data file in batches). Stops at the first
    non-None result.

    :param model_name: the registered model name.
    :param bundle: what ``load_model`` returned (with any LoRA weights already merged).
    :param prompts: samples whose messages end with a user turn; images as in training.
    :param max_new_tokens: the most tokens to generate per prompt.
    :param num_beams: 1 for greedy decoding, more for beam search with that many beams
        (:func:`mixcore.kit.generation.generate` does both). An implementation that does not
        declare this parameter decodes greedily.
    :return: one answer string per prompt (without the end-of-turn token), or None when
        ``model_name`` is not yours.
    """


@hookspec(firstresult=True)
def save_model(model_name: str, bundle: ModelBundle, folder: str) -> str | None:
    """Write a standalone checkpoint (weights, config, tokenizer, processor) into ``folder``.

    Called at the end of ``mixcore train`` (full fine-tuning) and by ``mixcore merge-lora``.
    What it writes must load again through the same plugin's ``load_model`` with ``folder`` as
    the source. Stops at the first non-None result; the core's default calls
    ``model.save_pretrained(folder, safe_serialization=True)`` and the tokenizer's
    ``save_pretrained``.

    :param model_name: the registered model name of the run.
    :param bundle: the model to save, with its tokenizer and processor.
    :param folder: the target folder (it exists).
    :return: ``folder``, or None when ``model_name`` is not yours.
    """


@hookspec(firstresult=True)
def export_model(
    model_name: str, bundle: ModelBundle, folder: str, max_length: int | None
) -> ModelExport | None:
    """Say how the model exports as Paddle static inference programs, for ``mixcore export``.

    Called once by ``mixcore export`` with the loaded model (any LoRA adapter merged, in
    evaluation mode). The plugin writes into ``folder`` the files its ``load_processing`` hook
    needs to turn prompts into features later (config, tokenizer, image processor; no weights)
    and returns the layers to save. The core traces each part with ``paddle.jit.to_static``,
    saves it with ``paddle.jit.save`` and writes the export's manifest. A model (or a variant of
    it) that cannot be exported raises :class:`mixcore.api.errors.UsageError` saying why. Stops
    at the first non-None result.

    :param model_name: the registered model name.
    :param bundle: what ``load_model`` returned.
    :param folder: an empty folder for the prompt-side files (it exists).
    :param max_length: the longest sequence (prompt and answer, image tokens included) the
        exported language model must take (``--max-length``), or None for the plugin's choice
        (:func:`mixcore.kit.nn.export.export_length`: the model's own limit, at most 512); a
        part whose sequence length must be fixed uses it. The result's ``max_length`` says
        what was used.
    :return: a :class:`mixcore.api.records.ModelExport` (parts by role, as
        :data:`mixcore.api.records.EXPORT_ROLES` lists them, and the decoding facts), or None
        when ``model_name`` is not yours.
    """


@hookspec(firstresult=True)
def load_processing(model_name: str, folder: str) -> ModelBundle | None:
    """Load what turns prompts into features for an exported model, without any weights.

    Called by ``mixcore infer --engine paddle-inference`` with the folder of prompt-side files
    the plugin's ``export_model`` wrote. The bundle it returns has ``model`` None and is handed
    to ``preprocess_sample`` for each prompt (so prompts are encoded exactly as for the dynamic
    model) and its ``tokenizer`` decodes the answers. Stops at the first non-None result.

    :param model_name: the registered model name recorded in the export.
    :param folder: the export's ``processing`` folder.
    :return: a :class:`mixcore.api.records.ModelBundle` with ``model`` None, or None when
        ``model_name`` is not yours.
    """


@hookspec(firstresult=True)
def lora_target_modules(model_name: str, bundle: ModelBundle) -> list[str] | None:
    """Name the layers LoRA adapts when the config does not list ``lora_target_modules``.

    Called once by ``mixcore train`` when ``lora`` is true. Stops at the first non-None result.

    :param model_name: the registered model name of the run.
    :param bundle: the loaded model, so targets can depend on its structure.
    :return: regular expressions matched against full parameter-owner names (as
        ``paddlenlp.peft.LoRAConfig.target_modules`` takes them), or None when not yours.
    """


@hookspec(firstresult=True)
def parallel_plan(model_name: str, bundle: ModelBundle) -> ParallelPlan | None:
    """Describe how the model splits across cards: tensor-parallel roles and pipeline stages.

    Called by ``mixcore checkpoint split`` (rank files of a full checkpoint), by
    :func:`mixcore.models.apply_parallel_plan` (a tensor-parallel training rank splits its
    model) and by the ``tensor_parallel_split`` conformance check. Stops at the first non-None
    result. Claiming the ``tensor_parallel`` or ``pipeline_parallel`` capability needs it; the
    config may then ask for those degrees above 1. The core checks the result (:func:`mixcore.api.plan_problems`,
    then against the model: every pattern matches, every split size divides by the degree); a
    bad plan is an error naming the plugin.

    :param model_name: the registered model name of the run.
    :param bundle: the loaded model; patterns are matched against its layer and parameter names.
    :return: a :class:`mixcore.api.ParallelPlan` (column, row and vocab layers, fused
        parameters, head counts, the ordered pipeline layers with the ones that stay on the
        first stage), or None when not yours.
    """


# --------------------------------------------------------------------------------------------------
# Dispatch hooks: dataset side. Return None for a dataset you do not own.
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def build_dataset(
    dataset_name: str, options: dict[str, Any], base_dir: str
) -> Sequence[Sample] | None:
    """Build one dataset of a config's ``dataset.train`` or ``dataset.eval`` list.

    Called once per dataset entry by ``mixcore train`` and ``mixcore infer``. Stops at the first
    non-None result.

    :param dataset_name: the entry's ``name``.
    :param options: the whole entry, validated against the dataset's option schema.
    :param base_dir: the folder of the config file; relative ``data_files`` resolve against it.
    :return: a sized, indexable sequence of :class:`mixcore.api.records.Sample` whose images are read
        only when a sample is used, or None when ``dataset_name`` is not yours. Problems with a
        record raise :class:`mixcore.api.errors.DataError` naming the file and index. When
        ``options`` has ``streaming: true``, a :class:`mixcore.api.records.ShardedSource` may be
        returned instead (read shard by shard while training, from any record position); a
        sequence returned for such an entry is streamed as one shard. mixcore also passes
        ``streaming: true`` when it reads an entry into its processed-data cache, so both
        answers must hold the same samples.
    """
