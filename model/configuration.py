"""WenzhiConfig: the encoder's shape and its two architecture families.

Self-contained (imports transformers only, and this package's files relatively): it is saved
beside every checkpoint so that `trust_remote_code=True` loads the model without wenzhi installed.
"""
from __future__ import annotations

from transformers import PretrainedConfig

from .conventions import ExampleKind

# Where the modeling code saved beside a checkpoint defines each class (see modeling.HUB_FILES).
AUTO_MAP = {
    "AutoConfig": "configuration.WenzhiConfig",
    "AutoModel": "modeling.WenzhiModel",
    "AutoModelForPreTraining": "modeling.WenzhiForPretraining",
    "AutoModelForMaskedLM": "modeling.WenzhiForMaskedLM",
    "AutoModelForTokenClassification": "modeling.WenzhiForTokenClassification",
    "AutoModelForSequenceClassification": "modeling.WenzhiForSequencePairClassification",
}


class WenzhiConfig(PretrainedConfig):
    """Universal module of `num_universal_layers` shared layers, NLU and NLG task modules on top.

    Two architecture families, chosen by `norm_placement` and `position_embedding_type`:

    - `"pre"` + `"rotary"` (the default, for models trained from scratch): pre-LN blocks train
      stably at the high learning rates of short CPU runs without a warmup search; rotary
      positions are relative, restart at every packed document and make a segment's states
      independent of where it sits in a row, which the late-interaction relation caches of
      `qa_service/relation_states.py` rely on.
    - `"post"` + `"absolute"` (set by `wenzhi pretrain convert --from-hf` and `--init` on a
      Hugging Face folder): BERT's and ERNIE's own architecture, so their checkpoints are
      reproduced exactly (last hidden states and MLM logits) and continue from what they know.
      Absolute positions still restart per packed document (each document indexes the learned
      table from 0, as it would alone).

    `use_task_id` / `task_type_vocab_size`: ERNIE 3.0's task-type embeddings, added to the input
    embeddings (task id 0 unless `task_type_ids` is given).

    `residual_in_fp32` (the name Mamba's config uses): under autocast, whether the residual stream
    between blocks stays in fp32 (True, the default: what the model computes without autocast) or
    in the autocast dtype (False: bf16, as Megatron-LM trains without --fp32-residual-connection).
    Parameters, their gradients and the optimizer stay fp32 either way; False halves the bytes of
    the residual stream that the memory-bound kernels between matmuls (LayerNorm, dropout, residual
    adds, forward and backward) read and write. It changes nothing outside autocast.
    """

    model_type = "wenzhi"

    def __init__(
        self,
        vocab_size: int = 21128,
        hidden_size: int = 256,
        num_universal_layers: int = 2,
        num_nlu_layers: int = 2,
        num_nlg_layers: int = 1,
        num_attention_heads: int = 4,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        max_position_embeddings: int = 512,
        type_vocab_size: int = 3,  # 0 text, 1 triple, 2 retrieved/knowledge context
        norm_placement: str = "pre",
        position_embedding_type: str = "rotary",
        rope_theta: float = 10000.0,
        use_task_id: bool = False,
        task_type_vocab_size: int = 3,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        cls_token_id: int = 101,
        sep_token_id: int = 102,
        mask_token_id: int = 103,
        num_kinds: int = len(ExampleKind),  # example kinds in the shards (per-kind loss)
        classifier_dropout: float | None = None,
        pair_interaction: str = "full",
        residual_in_fp32: bool = True,
        **kwargs,
    ):
        # Input and output embeddings are tied by construction (the heads project with the word
        # embedding matrix), so transformers' own tying machinery has nothing to do.
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if norm_placement not in ("pre", "post"):
            raise ValueError(f"norm_placement must be 'pre' or 'post', not {norm_placement!r}")
        if position_embedding_type not in ("rotary", "absolute"):
            raise ValueError(f"position_embedding_type must be 'rotary' or 'absolute', not {position_embedding_type!r}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} does not split into {num_attention_heads} heads")
        if position_embedding_type == "rotary" and (hidden_size // num_attention_heads) % 2:
            raise ValueError(f"rotary positions need an even head size, not {hidden_size // num_attention_heads}")
        if pair_interaction not in ("full", "late"):
            raise ValueError(f"pair_interaction must be 'full' or 'late', not {pair_interaction!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_universal_layers = num_universal_layers
        self.num_nlu_layers = num_nlu_layers
        self.num_nlg_layers = num_nlg_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.norm_placement = norm_placement
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.use_task_id = use_task_id
        self.task_type_vocab_size = task_type_vocab_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.mask_token_id = mask_token_id
        self.num_kinds = num_kinds
        self.classifier_dropout = classifier_dropout
        # Pair classification: "full" = the second segment attends to the first in every layer;
        # "late" = the universal module encodes the segments apart and they meet in the NLU layers,
        # so the second segment's universal states (a relation name) can be computed once and cached.
        self.pair_interaction = pair_interaction
        self.residual_in_fp32 = residual_in_fp32

    @property
    def num_hidden_layers(self) -> int:
        """Depth of the NLU path (universal + NLU layers), what a BERT of the same shape has."""
        return self.num_universal_layers + self.num_nlu_layers

    @property
    def is_bert_compatible(self) -> bool:
        """Post-LN blocks with learned absolute positions: the NLU path is a BERT encoder."""
        return self.norm_placement == "post" and self.position_embedding_type == "absolute"

    @property
    def position_independent_segments(self) -> bool:
        """Whether a segment's universal states do not depend on its offset in a row (rotary
        positions) and its blocks normalise their input (pre-LN): what cached relation states need."""
        return self.position_embedding_type == "rotary" and self.norm_placement == "pre"
