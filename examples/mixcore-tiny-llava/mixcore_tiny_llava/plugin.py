"""Entry module of the ``tiny_llava`` plugin: the glue between mixcore and the model.

Each work method of :class:`TinyLlava` is a few calls into :mod:`mixcore.kit` (conversation
encoding, collation, generation, checkpoint reading and writing); what is the model's own lives
in :mod:`.configuration`, :mod:`.modeling` and :mod:`.tokenization`. Those, and the kit modules
that need numpy, are imported inside the methods, so listing plugins stays cheap.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mixcore.api import ModelBundle, PluginError, Sample
from mixcore.kit import model_plugin as kit

PRESET = "tiny_llava/tiny"


class TinyLlava(kit.ModelPlugin):
    name = "tiny_llava"
    description = "Tiny LLaVA: patch-embedding vision encoder, MLP projector, PaddleNLP LLaMA"
    capabilities: ClassVar = {"inference": True, "sft": True, "lora": True, "packing": True}
    aliases = (PRESET,)
    model_types = ("tiny_llava",)
    options_schema: ClassVar = kit.object_schema(random_init=kit.RANDOM_INIT_OPTION)
    # Packed batches carry segment_ids; the model attends per segment (no len x len mask).
    packed_attention = "segments"
    # The kit's stock work methods: encoding with the encoder `load` puts in extras and the
    # image processor, right padding (packed segments too), and saving config, weights, tokenizer
    # and preprocessor config in the folder layout `load_checkpoint` reads.
    encode = kit.encode_conversation
    length = kit.conversation_length
    collate = kit.pad_collate
    save = kit.save_bundle

    def load(self, source: str, options: dict[str, Any]) -> ModelBundle:
        from paddlenlp.transformers import LlamaTokenizer

        from mixcore.kit.checkpoints import load_checkpoint
        from mixcore.kit.conversation import ConversationEncoder, ImageSlot
        from mixcore.kit.images import ImagePreprocessor
        from mixcore_tiny_llava import modeling, tokenization

        if problems := self.check_options(source, options):
            raise PluginError(problems[0])
        if Path(source).is_dir():  # a folder `save` wrote
            model = load_checkpoint(source, modeling.TinyLlavaForConditionalGeneration)
            tokenizer = LlamaTokenizer.from_pretrained(source)
            processor = ImagePreprocessor.from_pretrained(source)
        else:  # the preset, initialised at random (seed with paddle.seed first)
            model = modeling.TinyLlavaForConditionalGeneration(modeling.TinyLlavaConfig())
            tokenizer = tokenization.tiny_tokenizer()
            processor = ImagePreprocessor(model.config.image_size)
        span = (model.config.image_token_id,) * model.config.image_tokens
        encoder = ConversationEncoder(
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
            lambda number: ImageSlot(span, 0, len(span)),  # every image: one run of image tokens
            default_template=tokenization.CHAT_TEMPLATE,
            bos_ids=[tokenizer.bos_token_id],
            end_of_turn_ids=[tokenizer.eos_token_id],
        )
        extras = {"encoder": encoder}
        return ModelBundle(self.name, model, tokenizer, processor, modeling.COMPONENTS, extras)

    def check_options(self, source: str, options: dict[str, Any]) -> list[str]:
        if Path(source).is_dir() or (source == PRESET and options.get("random_init")):
            return []
        return [f"{source!r}: give a checkpoint folder, or {PRESET} with random_init true"]

    def answer(
        self, bundle: ModelBundle, prompts: Sequence[Sample], max_new_tokens: int, num_beams=1
    ) -> list[str]:
        from mixcore.kit.generation import CausalLMStep, generate_text

        model, tokenizer = bundle.model, bundle.tokenizer
        room = model.config.text_config["max_position_embeddings"] - max_new_tokens
        features = [self.encode(prompt, bundle, room) for prompt in prompts]
        step, embed = CausalLMStep(model.language_model), model.embed_inputs
        return generate_text(step, embed, features, tokenizer, max_new_tokens, num_beams=num_beams)

    def lora_targets(self, bundle: ModelBundle) -> list[str]:
        # The LLaMA attention projections (PaddleNLP's LoRAModel re.fullmatch-es the patterns).
        return [r".*language_model\.llama\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"]


plugin = TinyLlava()
