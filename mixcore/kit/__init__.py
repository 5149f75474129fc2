"""The model toolkit: the services every model (and dataset) plugin may use.

Importing any module here imports no Paddle, PaddleNLP or Pillow at module level; they are
imported inside the functions that need them, so a plugin's entry module stays cheap to list.
The one exception is the subpackage ``nn``, whose modules define Paddle layers: import it inside
hooks only.

=====================  ========================================================================
module                 what it does
=====================  ========================================================================
``model_plugin``       :class:`ModelPlugin`: one object per model, its work methods become hooks;
                       the shared options (``random_init``, ``dtype``) and component freezing
``conversation``       :class:`ConversationEncoder`: template -> ids, image spans, shifted labels
``templates``          chat templates (PaddleNLP form, Hugging Face Jinja, ChatML) -> segments
``collation``          :func:`pad_batch` (right padding, packed masks, images), :func:`left_pad`
``packing``            MIXToken packing plan and packed features, the block-diagonal mask
``generation``         :func:`generate`: KV-cache greedy and beam search over ``inputs_embeds``
``image_features``     :func:`splice_image_features`: image features over placeholder tokens
``checkpoints``        checkpoint folders: read/write weights, ``config.json`` with the writer's
                       record, :func:`building` (dtype, no wasted init), :func:`compute_dtype`
``weights``            safetensors and PyTorch ``.bin`` tensors without torch; copying into a model
``torch_bin``          the code-free ``torch.save`` reader behind ``weights``
``safe_pickle``        an arrays-only unpickler for PaddleNLP's pickled adapters
``images``             safe image loading, :class:`ImagePreprocessor` (resize, rescale, normalise)
``files``              bounded reading of regular files and JSON, with errors naming the file
``scoring``            exact-match scoring of short answers
``names``              did-you-mean suggestions
``shapes_vocabulary``  the generated shapes data's words, for tiny tokenizers that cover it
``tensor_parallel``    a :class:`~mixcore.api.ParallelPlan` resolved against a model; state dicts
                       split into rank shards and merged back, rank files, the single-process
                       simulation of the split forward, fleet's collectives, pipeline stages
``parallel_plans``     plan fragments of the ``nn`` vision transformer and Q-Former
``nn``                 Paddle layers models share: the BLIP-2 vision transformer, the Q-Former,
                       the token loss, attention per packed segment
=====================  ========================================================================
"""
