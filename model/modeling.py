"""wenzhi's encoder: an ERNIE-3.0-style universal module with NLU and NLG task modules.

    tokens ──embed──> universal layers (shared) ──┬──> NLU layers (bidirectional)  -> MLM / NER / SIM heads
                                                  └──> NLG layers (prefix-LM mask) -> LM / generation head

One `F.scaled_dot_product_attention` call per layer whose boolean mask is block-diagonal over
`document_ids` (attention never crosses documents in a packed row), positions that restart at
every packed document, and two block families (configuration.py says which is the default and
why): pre-LN blocks with rotary positions for models trained from scratch, post-LN blocks with
learned absolute positions (and ERNIE's task-type embeddings) so that a BERT or ERNIE checkpoint
imported by hf_convert.py computes exactly what it computed before. The NLG path runs the
universal module under the prefix-LM (UniLM) mask too, otherwise target tokens would see the
future through the shared layers.

`model.universal(...)` runs the shared module once and returns a `UniversalOutput`; every head offers
`from_universal(universal_output, ...)`, so one backbone pass can feed several heads (OBERT's unified
representation). Heads fine-tuned with `freeze_universal()` from one checkpoint keep bit-identical
universal weights and can therefore share that pass.

This file, configuration.py, conventions.py, generation.py, copying.py and relation_matching.py
import nothing from wenzhi (only each other, relatively): `save_pretrained` copies them beside the
weights, and config.json's
`auto_map` names them, so a checkpoint loads with `trust_remote_code=True` where wenzhi is not
installed. hub.py registers the same classes with transformers' Auto classes on `import wenzhi`.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .configuration import WenzhiConfig
from .conventions import IGNORE_INDEX
from .copying import CopyHead, SourceStates
from .outputs import GenerationResult, PrefixLMOutput, UniversalOutput, WenzhiPretrainingOutput

# The self-contained modeling code that `save_pretrained` writes beside the weights.
HUB_FILES = ("configuration.py", "conventions.py", "outputs.py", "modeling.py", "generation.py", "copying.py",
             "relation_matching.py")

# re-exported: callers import these from here too
__all__ = ["IGNORE_INDEX", "GenerationResult", "PrefixLMOutput", "UniversalOutput", "WenzhiConfig",
           "WenzhiPretrainingOutput"]


# ----------------------------------------------------------------------------- attention layout


@dataclass
class AttentionLayout:
    """Who may attend to whom, and where each token sits: shared by every layer of a pass."""

    mask: torch.Tensor | None  # bool [B, 1, L, L], True = may attend; None = everyone sees everyone
    positions: torch.Tensor  # long [B, L], restarting at 0 at every document
    document_ids: torch.Tensor  # long [B, L], -1 = padding
    prefix_lm: bool  # True when built with the prefix-LM (UniLM) mask


def positions_from_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Index of each token inside its own (contiguous) document: [0,1,2,0,1,0,...]."""
    B, L = document_ids.shape
    arange = torch.arange(L, device=document_ids.device).expand(B, L)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_index = torch.cummax(torch.where(starts, arange, torch.zeros_like(arange)), dim=1).values
    return arange - start_index


def build_layout(
    input_ids: torch.Tensor,
    document_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    prefix_lengths: torch.Tensor | None = None,
    prefix_lm: bool = False,
) -> AttentionLayout:
    """Block-diagonal (per document) mask; with `prefix_lm`, bidirectional over each document's
    first `prefix_lengths` tokens and causal after them. `prefix_lengths` is [B] (same prefix for
    every document of a row) or [B, L] (per token: the prefix length of that token's document);
    None with prefix_lm means a purely causal mask."""
    B, L = input_ids.shape
    if document_ids is None:
        if attention_mask is None:
            document_ids = torch.zeros_like(input_ids, dtype=torch.long)
        else:
            document_ids = torch.where(attention_mask.bool(), 0, -1).long()
    document_ids = document_ids.long()
    positions = positions_from_documents(document_ids)
    # (the prefix-LM mask is needed either way: no need to ask, and asking waits for the device)
    if not prefix_lm and bool((document_ids == document_ids[:, :1]).all()):
        return AttentionLayout(None, positions, document_ids, False)
    mask = document_ids[:, :, None] == document_ids[:, None, :]
    if prefix_lm:
        if prefix_lengths is None:
            prefix_lengths = torch.zeros(B, dtype=torch.long, device=input_ids.device)
        prefix_lengths = prefix_lengths.to(input_ids.device).long()
        if prefix_lengths.dim() == 1:
            prefix_lengths = prefix_lengths[:, None].expand(B, L)
        key_pos = positions[:, None, :]
        visible = (key_pos <= positions[:, :, None]) | (key_pos < prefix_lengths[:, None, :])
        mask = mask & visible
    return AttentionLayout(mask[:, None], positions, document_ids, prefix_lm)


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # [B, L, D/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, L, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos, rotated, sin)


class _RotaryFunction(torch.autograd.Function):
    """The rotation with its gradient written out: each (x_i, x_{i+D/2}) pair turns by its angle,
    so the gradient is the same pairs turned back (sin negated): one more rotation. Autograd's own
    backward of the formula retraced the concatenation, the negation and both slices, each slice's
    gradient a zero-filled full-size tensor (per layer, for q and for k)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] rotated by the tables (`rotary_tables`: both halves hold the same angles), in x's
    dtype. Under bf16 autocast the projections are bf16 while the tables follow the fp32 residual
    stream: mixing them promoted q and k to fp32 (twice the bytes, then a cast back) in every layer
    of an eager GPU training step (bench/RESULTS.md, the H200 check). WenzhiModel.rotary makes them
    in the autocast dtype; the cast here is then a no-op, kept for callers with their own tables."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if cos.requires_grad or sin.requires_grad:  # tables from positions never need one; learned ones would
        return _rotate(x, cos, sin)
    return _RotaryFunction.apply(x, cos, sin)


# ----------------------------------------------------------------------------- blocks


class SelfAttention(nn.Module):
    def __init__(self, config: WenzhiConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, cos, sin, mask, cache: dict | None = None, queries: torch.Tensor | None = None):
        """`cos`/`sin`: rotary tables, None with absolute positions (already in the embeddings).
        `queries`: optional indices into L; only those tokens are queries (every token is still a
        key/value) and the output is [B, len(queries), H]. A pair classifier reads one token of its
        last layer, so computing the others there is waste."""
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, nh, L, hd]
        if cos is not None:
            k = apply_rotary(k, cos, sin)
        if queries is not None:
            q = q[:, :, queries]
            if cos is not None:
                cos, sin = cos[:, :, queries], sin[:, :, queries]
            if mask is not None and mask.shape[2] > 1:
                mask = mask[:, :, queries]
        if cos is not None:
            q = apply_rotary(q, cos, sin)
        if cache is not None:  # incremental decoding: keys/values of earlier tokens
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(B, q.shape[2], H))


class FeedForward(nn.Module):
    def __init__(self, config: WenzhiConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """Pre-LN: x + attn(LN(x)), then x + ffn(LN(x)). Post-LN (BERT, ERNIE): LN(x + attn(x)), then
    LN(x + ffn(x)); `attn_norm` is then BERT's attention.output.LayerNorm, `ffn_norm` its output.LayerNorm."""

    def __init__(self, config: WenzhiConfig):
        super().__init__()
        self.post_norm = config.norm_placement == "post"
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, cos, sin, mask, cache=None, queries: torch.Tensor | None = None):
        """x [B, L, H] -> [B, L, H], or [B, len(queries), H] for the `queries` tokens only."""
        residual = x if queries is None else x[:, queries]
        if self.post_norm:
            # (autocast runs LayerNorm in fp32: its output goes back to the stream's dtype, a no-op
            # unless the stream is kept in bf16, config.residual_in_fp32=False)
            stream = x.dtype
            x = self.attn_norm(residual + self.dropout(self.attn(x, cos, sin, mask, cache, queries))).to(stream)
            return self.ffn_norm(x + self.dropout(self.ffn(x))).to(stream)
        x = residual + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask, cache, queries))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Embeddings(nn.Module):
    """word + segment (+ learned absolute position) (+ ERNIE task type), then LN and dropout."""

    def __init__(self, config: WenzhiConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        absolute = config.position_embedding_type == "absolute"
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size) if absolute else None
        self.task_type = nn.Embedding(config.task_type_vocab_size, config.hidden_size) if config.use_task_id else None
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, positions: torch.Tensor | None = None,
                task_type_ids: torch.Tensor | None = None):
        """`positions` [B, L] index the learned table (default 0..L-1); rotary models ignore them here."""
        x = self.word(input_ids) + self.token_type(token_type_ids)
        if self.position is not None:
            if positions is None:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            limit = self.position.num_embeddings
            if positions.shape[-1] > limit and int(positions.max()) >= limit:  # a sync only where it can happen
                raise ValueError(f"position {int(positions.max())} is beyond the {limit} learned positions "
                                 "(max_position_embeddings): shorten the input or its documents")
            x = x + self.position(positions)
        if self.task_type is not None:
            x = x + self.task_type(torch.zeros_like(input_ids) if task_type_ids is None else task_type_ids)
        return self.dropout(self.norm(x))


class PredictionHead(nn.Module):
    """dense + activation + LN, then the (tied) word-embedding projection plus a bias (BERT's MLM head)."""

    def __init__(self, config: WenzhiConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(self.act(self.dense(hidden))), word_embeddings, self.bias)


# ----------------------------------------------------------------------------- models


class WenzhiPreTrainedModel(PreTrainedModel):
    config_class = WenzhiConfig
    base_model_prefix = "wenzhi"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PredictionHead):
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """transformers' save_pretrained, plus the modeling code (HUB_FILES) that config.json's
        `auto_map` names, so the folder loads with `trust_remote_code=True` without wenzhi."""
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            here = Path(__file__).parent
            for name in HUB_FILES:
                shutil.copyfile(here / name, Path(save_directory) / name)

    def freeze_universal(self, frozen: bool = True) -> None:
        """Stop (or resume) training the embeddings and the universal module (ERNIE 3.0 fine-tuning)."""
        base = self.wenzhi if hasattr(self, "wenzhi") else self
        for p in list(base.embeddings.parameters()) + list(base.universal_layers.parameters()):
            p.requires_grad_(not frozen)

    def universal(self, *args, **kwargs) -> UniversalOutput:
        base = self.wenzhi if hasattr(self, "wenzhi") else self
        return base.universal(*args, **kwargs)

    def get_input_embeddings(self):
        base = self.wenzhi if hasattr(self, "wenzhi") else self
        return base.embeddings.word

    def set_input_embeddings(self, value):
        base = self.wenzhi if hasattr(self, "wenzhi") else self
        base.embeddings.word = value


class WenzhiModel(WenzhiPreTrainedModel):
    _keys_to_ignore_on_load_unexpected = [r"^(mlm_head|lm_head|pooler|classifier)\."]  # a head's own layers

    def __init__(self, config: WenzhiConfig):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.universal_layers = nn.ModuleList(Block(config) for _ in range(config.num_universal_layers))
        self.nlu_layers = nn.ModuleList(Block(config) for _ in range(config.num_nlu_layers))
        self.nlg_layers = nn.ModuleList(Block(config) for _ in range(config.num_nlg_layers))
        # pre-LN stacks end with a norm; post-LN blocks already end in one (BERT has no final norm)
        pre = config.norm_placement == "pre"
        self.nlu_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if pre else nn.Identity()
        self.nlg_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if pre else nn.Identity()
        self.post_init()

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple:
        """(cos, sin) rotary tables for `positions` [B, L]; (None, None) with absolute positions.
        Under autocast they are made once in its dtype, the dtype of the projections they rotate
        (`dtype`, the residual stream's, is fp32 there), not cast again in every layer."""
        if self.config.position_embedding_type != "rotary":
            return None, None
        if torch.is_autocast_enabled(positions.device.type):
            dtype = torch.get_autocast_dtype(positions.device.type)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        return rotary_tables(positions, head_dim, self.config.rope_theta, dtype)

    def residual_stream(self, embedded: torch.Tensor) -> torch.Tensor:
        """The embeddings' output as the residual stream starts: in autocast's dtype where the
        config keeps it out of fp32 (`residual_in_fp32=False`) and autocast is on, else as it is."""
        device = embedded.device.type
        if not self.config.residual_in_fp32 and torch.is_autocast_enabled(device):
            return embedded.to(torch.get_autocast_dtype(device))
        return embedded

    def universal(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        prefix_lm: bool = False,
        caches: list | None = None,
        layout: AttentionLayout | None = None,
        task_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> UniversalOutput:
        """Embeddings + shared layers. `prefix_lm=True` (or giving `prefix_lengths`) builds the
        prefix-LM mask that the NLG branch needs; otherwise the mask is bidirectional per document."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if layout is None:
            layout = build_layout(
                input_ids, document_ids, attention_mask, prefix_lengths, prefix_lm or prefix_lengths is not None
            )
        x = self.residual_stream(self.embeddings(input_ids, token_type_ids.long(), layout.positions, task_type_ids))
        cos, sin = self.rotary(layout.positions, x.dtype)
        per_layer = [x] if output_hidden_states else None
        for i, block in enumerate(self.universal_layers):
            x = block(x, cos, sin, layout.mask, caches[i] if caches is not None else None)
            if per_layer is not None:
                per_layer.append(x)
        return UniversalOutput(hidden_states=x, layout=layout, rotary=(cos, sin), hidden_states_per_layer=per_layer)

    def nlu(self, universal_output: UniversalOutput) -> torch.Tensor:
        """Last hidden states [B, L, H] of the NLU module; each layer's output is appended to
        `universal_output.hidden_states_per_layer` when that list is there."""
        x = universal_output.hidden_states
        cos, sin = universal_output.rotary or (None, None)
        per_layer = universal_output.hidden_states_per_layer
        for block in self.nlu_layers:
            x = block(x, cos, sin, universal_output.layout.mask)
            if per_layer is not None:
                per_layer.append(x)
        x = self.nlu_norm(x)
        if per_layer is not None:
            per_layer[-1] = x  # as in transformers: the last entry is the normalised output
        return x

    def nlg(self, universal_output: UniversalOutput, caches: list | None = None) -> torch.Tensor:
        if not universal_output.layout.prefix_lm:
            raise ValueError(
                "the NLG branch needs the universal module run under the prefix-LM mask "
                "(universal(..., prefix_lm=True) or prefix_lengths=...); a bidirectional pass leaks the future"
            )
        x = universal_output.hidden_states
        cos, sin = universal_output.rotary or (None, None)
        offset = len(self.universal_layers)
        for i, block in enumerate(self.nlg_layers):
            x = block(x, cos, sin, universal_output.layout.mask, caches[offset + i] if caches is not None else None)
        return self.nlg_norm(x)

    # -- inference from cached keys/values: a prefix (a question) encoded once, segments (relation
    # names) run against it. The serving routes of qa_service compose these; tests/qa/test_qa_packing.py
    # checks them against one pass over the joined rows.
    def encode_prefix(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                      layout: AttentionLayout | None = None) -> tuple[UniversalOutput, list[dict]]:
        """The universal pass over `input_ids` [B, L] and each universal layer's keys/values, which
        `extend` lets later tokens attend to without running the prefix again."""
        caches = [dict() for _ in self.universal_layers]
        return self.universal(input_ids, token_type_ids, layout=layout, caches=caches), caches

    def extend(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, caches: list[dict],
               token_type_ids: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Universal states [N, L, H] of new tokens `input_ids` [N, L] at `positions`, attending to the
        cached keys/values of a prefix (row `rows[i]` of each cache for new row i; default row i) and
        to each other, as `mask` [N, 1, L, cached + L] allows. The caches are left as they were."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.residual_stream(self.embeddings(input_ids, token_type_ids.long(), positions))
        cos, sin = self.rotary(positions, x.dtype)
        for block, cache in zip(self.universal_layers, caches):
            x = block(x, cos, sin, mask, _cache_rows(cache, rows))
        return x

    def nlu_prefix_cache(self, universal_output: UniversalOutput) -> list[dict]:
        """Each NLU layer's keys/values over a prefix's universal states: what segments' NLU layers
        attend to (`nlu_extend`)."""
        x = universal_output.hidden_states
        cos, sin = universal_output.rotary or (None, None)
        caches = []
        for block in self.nlu_layers:
            cache: dict = {}
            x = block(x, cos, sin, universal_output.layout.mask, cache)
            caches.append(cache)
        return caches

    def nlu_extend(self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, caches: list[dict],
                   rows: torch.Tensor | None = None, last_queries: torch.Tensor | None = None) -> torch.Tensor:
        """NLU states of segment tokens whose universal states are `hidden` [N, L, H], at `positions`,
        attending to a prefix's cached NLU keys/values (`rows` as in `extend`) and to each other as
        `mask` allows; normalised as `nlu` is. With `last_queries` (indices into L) the last layer
        computes only those tokens (a pair classifier reads one): [N, len(last_queries), H]."""
        cos, sin = self.rotary(positions, hidden.dtype)
        last = len(self.nlu_layers) - 1
        for i, (block, cache) in enumerate(zip(self.nlu_layers, caches)):
            hidden = block(hidden, cos, sin, mask, _cache_rows(cache, rows), queries=last_queries if i == last else None)
        return self.nlu_norm(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task_type_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        branch: str = "nlu",
        prefix_lengths: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """`last_hidden_state` [B, L, H] of the NLU (bidirectional) or NLG (prefix-LM) branch;
        `hidden_states` (embeddings, then each layer) with output_hidden_states."""
        if branch not in ("nlu", "nlg"):
            raise ValueError(f"branch must be 'nlu' or 'nlg', not {branch!r}")
        want_states = bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
        out = self.universal(input_ids, token_type_ids, document_ids, attention_mask, prefix_lengths,
                             prefix_lm=branch == "nlg", task_type_ids=task_type_ids, output_hidden_states=want_states)
        hidden = self.nlu(out) if branch == "nlu" else self.nlg(out)
        result = BaseModelOutput(last_hidden_state=hidden,
                                 hidden_states=tuple(out.hidden_states_per_layer) if want_states and branch == "nlu" else None)
        return result if return_dict is not False else result.to_tuple()


def _cache_rows(cache: dict, rows: torch.Tensor | None) -> dict:
    """A fresh cache dict over `rows` of a layer's cached keys/values (attention appends to the dict
    it is given, so the prefix's own cache must not be handed over)."""
    if rows is None:
        return {"k": cache["k"], "v": cache["v"]}
    return {"k": cache["k"].index_select(0, rows), "v": cache["v"].index_select(0, rows)}


def _masked_lm_targets(labels: torch.Tensor) -> torch.Tensor:
    return labels.reshape(-1) != IGNORE_INDEX


class WenzhiForMaskedLM(WenzhiPreTrainedModel):
    """The NLU path with the MLM head over every position: what `AutoModelForMaskedLM` and
    `pipeline("fill-mask")` load. Reads a pretraining checkpoint (its NLG layers and LM head unused)."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^wenzhi\.nlg_"]

    def __init__(self, config: WenzhiConfig):
        super().__init__(config)
        self.wenzhi = WenzhiModel(config)
        self.mlm_head = PredictionHead(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, task_type_ids=None,
                document_ids=None, output_hidden_states=None, return_dict=None, **kwargs) -> MaskedLMOutput:
        base = self.wenzhi(input_ids, attention_mask, token_type_ids, task_type_ids, document_ids, output_hidden_states)
        logits = self.mlm_head(base.last_hidden_state, self.wenzhi.embeddings.word.weight)  # [B, L, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                                   ignore_index=IGNORE_INDEX)
        result = MaskedLMOutput(loss=loss, logits=logits, hidden_states=base.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class WenzhiForPretraining(WenzhiPreTrainedModel):
    """Knowledge MLM on the NLU branch, projected to the vocabulary ONLY at masked positions (the
    hidden states where labels != -100 are gathered first), plus prefix-LM loss on the NLG branch.
    Without labels it returns the MLM `logits` of every position, like a masked LM."""

    def __init__(self, config: WenzhiConfig):
        super().__init__(config)
        self.wenzhi = WenzhiModel(config)
        self.mlm_head = PredictionHead(config)
        self.lm_head = PredictionHead(config)
        self.post_init()

    def mlm_from_universal(self, universal_output: UniversalOutput, labels: torch.Tensor, kind=None):
        hidden = self.wenzhi.nlu(universal_output)
        selected = _masked_lm_targets(labels)
        masked_hidden = hidden.reshape(-1, hidden.shape[-1])[selected]  # [M, H]
        targets = labels.reshape(-1)[selected].long()
        logits = self.mlm_head(masked_hidden, self.wenzhi.embeddings.word.weight)  # [M, V]
        token_loss = F.cross_entropy(logits.float(), targets, reduction="none")
        # a sum over a clamped count, not mean() behind an emptiness test: no branch (a device sync) on
        # how many tokens are masked; 0 when none is
        loss = token_loss.sum() / selected.sum().clamp(min=1)
        kind_sum = kind_count = None
        if kind is not None:
            token_kind = kind.long()[:, None].expand_as(labels).reshape(-1)[selected]
            n = self.config.num_kinds
            kind_sum = torch.zeros(n, device=loss.device).index_add_(0, token_kind, token_loss.detach())
            kind_count = torch.zeros(n, dtype=torch.long, device=loss.device).index_add_(
                0, token_kind, torch.ones_like(token_kind))  # (bincount's size depends on the data)
        correct = (logits.argmax(-1) == targets).sum().detach()
        return loss, logits, kind_sum, kind_count, correct

    def lm_from_universal(self, universal_output: UniversalOutput, lm_labels: torch.Tensor):
        """Next-token loss: hidden at t predicts lm_labels[t + 1] when t and t + 1 share a document."""
        hidden = self.wenzhi.nlg(universal_output)
        doc = universal_output.layout.document_ids
        shifted = lm_labels[:, 1:]
        keep = (shifted != IGNORE_INDEX) & (doc[:, 1:] == doc[:, :-1])
        h = hidden[:, :-1][keep]
        logits = self.lm_head(h, self.wenzhi.embeddings.word.weight)
        # as the MLM loss: no branch on the number of predictions (0 when there is none)
        return F.cross_entropy(logits.float(), shifted[keep].long(), reduction="sum") / keep.sum().clamp(min=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        kind: torch.Tensor | None = None,
        lm_input_ids: torch.Tensor | None = None,
        lm_prefix_lengths: torch.Tensor | None = None,
        lm_labels: torch.Tensor | None = None,
        lm_weight: float = 1.0,
        task_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> WenzhiPretrainingOutput:
        """MLM over (masked) `input_ids`; the NLG loss runs when `lm_prefix_lengths` ([B] or per token
        [B, L]) is given: on `lm_input_ids` (default: the original tokens, labels put back), predicting
        `lm_labels` (default: the tokens after each document's prefix)."""
        # The layout first, here: deciding whether a row holds one document waits for the device (and
        # torch.compile breaks its graph there), once per forward, before any of the encoder's work.
        layout = build_layout(input_ids, document_ids, attention_mask)
        out = self.wenzhi.universal(input_ids, token_type_ids, layout=layout, task_type_ids=task_type_ids,
                                    output_hidden_states=bool(output_hidden_states))
        mlm_loss = mlm_logits = kind_sum = kind_count = correct = logits = None
        total = None
        if labels is not None:
            mlm_loss, mlm_logits, kind_sum, kind_count, correct = self.mlm_from_universal(out, labels, kind)
            total = mlm_loss
        else:
            logits = self.mlm_head(self.wenzhi.nlu(out), self.wenzhi.embeddings.word.weight)
        lm_loss = None
        if lm_prefix_lengths is not None and lm_weight > 0:
            if lm_input_ids is None:
                if labels is None:
                    raise ValueError("lm_input_ids or labels (to restore the original tokens) is required")
                lm_input_ids = torch.where(labels != IGNORE_INDEX, labels, input_ids)
            lm_out = self.wenzhi.universal(
                lm_input_ids, token_type_ids, out.layout.document_ids, prefix_lengths=lm_prefix_lengths,
                task_type_ids=task_type_ids,
            )
            if lm_labels is None:
                prefix = lm_prefix_lengths if lm_prefix_lengths.dim() == 2 else lm_prefix_lengths[:, None]
                target = (lm_out.layout.positions >= prefix) & (lm_out.layout.document_ids >= 0)
                lm_labels = torch.where(target, lm_input_ids, IGNORE_INDEX)
            lm_loss = self.lm_from_universal(lm_out, lm_labels)
            total = lm_weight * lm_loss if total is None else total + lm_weight * lm_loss
        return WenzhiPretrainingOutput(
            loss=total, mlm_loss=mlm_loss, lm_loss=lm_loss, mlm_logits=mlm_logits,
            kind_loss_sum=kind_sum, kind_count=kind_count, mlm_correct=correct, logits=logits,
            hidden_states=tuple(out.hidden_states_per_layer) if output_hidden_states else None,
        )


class WenzhiForTokenClassification(WenzhiPreTrainedModel):
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^mlm_head\."]

    def __init__(self, config: WenzhiConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.wenzhi = WenzhiModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def from_universal(self, universal_output: UniversalOutput, labels: torch.Tensor | None = None):
        hidden = self.wenzhi.nlu(universal_output)
        logits = self.classifier(self.dropout(hidden))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1).long(),
                                   ignore_index=IGNORE_INDEX)
        states = universal_output.hidden_states_per_layer
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=tuple(states) if states else None)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None,
                task_type_ids=None, output_hidden_states=None, **kwargs):
        out = self.wenzhi.universal(input_ids, token_type_ids, document_ids, attention_mask,
                                    task_type_ids=task_type_ids, output_hidden_states=bool(output_hidden_states))
        return self.from_universal(out, labels)


class WenzhiForSequencePairClassification(WenzhiPreTrainedModel):
    """Scores a pair such as `[CLS] question [SEP] relation [SEP]` from the [CLS] (first) token.
    num_labels == 1: one similarity logit trained with BCE on float labels in [0, 1];
    num_labels > 1: softmax classes trained with cross-entropy."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^mlm_head\."]

    def __init__(self, config: WenzhiConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.wenzhi = WenzhiModel(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pair_logits(self, cls_states: torch.Tensor) -> torch.Tensor:
        """Logits [N, num_labels] from the NLU module's states [N, H] at each pair's [CLS]."""
        return self.classifier(self.dropout(torch.tanh(self.pooler(cls_states))))

    def from_universal(self, universal_output: UniversalOutput, labels: torch.Tensor | None = None):
        logits = self.pair_logits(self.wenzhi.nlu(universal_output)[:, 0])
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, task_type_ids=None, **kwargs):
        if self.config.pair_interaction == "full":
            out = self.wenzhi.universal(input_ids, token_type_ids, attention_mask=attention_mask,
                                        task_type_ids=task_type_ids)
            return self.from_universal(out, labels)
        if token_type_ids is None:
            raise ValueError("pair_interaction='late' needs token_type_ids to tell the two segments apart")
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        segments = torch.where(keep, token_type_ids.long(), -1)  # [B, L]; -1 = padding
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        apart = (segments[:, :, None] == segments[:, None, :])[:, None]
        out = self.wenzhi.universal(input_ids, token_type_ids, layout=AttentionLayout(apart, positions, segments, False),
                                    task_type_ids=task_type_ids)
        together = ((segments[:, :, None] >= 0) & (segments[:, None, :] >= 0)) | apart
        out.layout = AttentionLayout(together, positions, segments, False)
        return self.from_universal(out, labels)


class WenzhiForPrefixLM(WenzhiPreTrainedModel):
    """Seq2seq in one stack (UniLM): `[CLS] source [SEP] target [SEP]`, bidirectional over the
    source prefix, causal over the target; the loss is next-token prediction over the target.
    With `config.copy_source` (a config key this class reads; default off) a `CopyHead` mixes a
    pointer over the source tokens into the next-token distribution."""

    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\."]

    def __init__(self, config: WenzhiConfig):
        super().__init__(config)
        self.wenzhi = WenzhiModel(config)
        self.lm_head = PredictionHead(config)  # same name as in WenzhiForPretraining: loads from it
        # used when `config.copy_source` is set; always built, so a checkpoint of either kind loads
        # and the flag can be set on a config that does not declare it (fine-tuning does)
        self.copy_head = CopyHead(config)
        self.post_init()

    @property
    def copies(self) -> bool:
        return bool(getattr(self.config, "copy_source", False))

    def source_states(self, hidden: torch.Tensor, input_ids: torch.Tensor, prefix_lengths: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> SourceStates:
        """The copyable source tokens of rows laid out `[CLS] source [SEP] ...` (prefix first)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        copyable = (positions[None] < prefix_lengths.to(input_ids.device)[:, None]) & (
            input_ids != self.config.cls_token_id) & (input_ids != self.config.sep_token_id) & (
            input_ids != self.config.pad_token_id)
        if attention_mask is not None:
            copyable &= attention_mask.bool()
        return SourceStates(hidden, input_ids, copyable)

    def next_token_logprobs(self, hidden: torch.Tensor, source: SourceStates | None = None,
                            rows: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities [N, V] of the next token from NLG states `hidden` [N, H]; a copying model
        also reads `source` (row `rows[i]` of it for hidden i; default: row i)."""
        logits = self.lm_head(hidden, self.wenzhi.embeddings.word.weight)
        if not self.copies:
            return F.log_softmax(logits.float(), dim=-1)
        if source is None:
            raise ValueError("a copying generator (config.copy_source) needs the source states")
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        return self.copy_head(hidden, logits, pick(source.hidden_states), pick(source.input_ids),
                              pick(source.copyable))

    def from_universal(self, universal_output: UniversalOutput, labels: torch.Tensor | None = None,
                       input_ids: torch.Tensor | None = None, prefix_lengths: torch.Tensor | None = None):
        """A copying model also needs the rows' `input_ids` and `prefix_lengths` (what it may copy);
        its `logits` are log-probabilities, and with `labels` in training mode None (the loss needs the
        gold tokens' probabilities only)."""
        hidden = self.wenzhi.nlg(universal_output)
        source = None
        if self.copies:
            if input_ids is None or prefix_lengths is None:
                raise ValueError("a copying generator (config.copy_source) needs input_ids and prefix_lengths")
            source = self.source_states(hidden, input_ids, prefix_lengths, universal_output.layout.document_ids >= 0)
        loss = logits = None
        if labels is not None:  # project only where a next token is predicted
            doc = universal_output.layout.document_ids
            shifted = labels[:, 1:]
            keep = (shifted != IGNORE_INDEX) & (doc[:, 1:] == doc[:, :-1])
            if not self.copies:
                logits = self.lm_head(hidden[:, :-1][keep], self.wenzhi.embeddings.word.weight)
                loss = F.cross_entropy(logits.float(), shifted[keep].long()) if keep.any() else logits.sum() * 0.0
            else:  # the loss from the gold tokens' probabilities; the full mixture only outside training
                rows, gold, target = keep.nonzero()[:, 0], shifted[keep].long(), hidden[:, :-1][keep]
                vocab = self.lm_head(target, self.wenzhi.embeddings.word.weight)
                picked = [t[rows] for t in (source.hidden_states, source.input_ids, source.copyable)]
                gold_logprob = self.copy_head.token_logprob(target, vocab, *picked, gold)
                loss = -gold_logprob.mean() if keep.any() else vocab.sum() * 0.0
                if not self.training:
                    logits = self.copy_head(target, vocab, *picked)
        elif not self.copies:
            logits = self.lm_head(hidden, self.wenzhi.embeddings.word.weight)
        else:
            B, L, _ = hidden.shape
            rows = torch.arange(B, device=hidden.device).repeat_interleave(L)
            logits = self.next_token_logprobs(hidden.reshape(B * L, -1), source, rows).view(B, L, -1)
        return PrefixLMOutput(loss=loss, logits=logits)

    def forward(self, input_ids, prefix_lengths, token_type_ids=None, attention_mask=None, labels=None):
        """`prefix_lengths` [B]: source length (incl. [CLS] ... [SEP]) of each row. `labels` are aligned
        with input_ids (shifted inside) and -100 on the source and padding; with labels, `logits` are
        only those of the predicted positions ([num_targets, V]), else [B, L, V]."""
        out = self.wenzhi.universal(
            input_ids, token_type_ids, attention_mask=attention_mask, prefix_lengths=prefix_lengths
        )
        return self.from_universal(out, labels, input_ids, prefix_lengths)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        num_return_sequences: int = 1,
        allowed_tokens_fn: Callable[[int, list[int]], list[int]] | None = None,
        eos_token_id: int | None = None,
        target_token_type: int = 0,
        length_penalty: float = 1.0,
        renormalize: bool = False,
    ) -> GenerationResult:
        """Greedy (num_beams=1) or beam search from source rows `input_ids` (each `[CLS] source [SEP]`,
        any padding side given `attention_mask`). `allowed_tokens_fn(batch_idx, prefix_ids)` gets the
        row index and the target tokens generated so far and returns the token ids allowed next (a
        KB prefix trie); an empty list ends that hypothesis. With `renormalize` the log-probabilities
        are renormalised over the allowed tokens, so a hypothesis scores as a path among the allowed
        ones (a forced token costs nothing). Uses a key/value cache: the source is encoded once,
        each step runs one token through the layers."""
        from .generation import prefix_lm_generate

        return prefix_lm_generate(
            self, input_ids, attention_mask, token_type_ids, max_new_tokens, num_beams,
            num_return_sequences, allowed_tokens_fn,
            self.config.sep_token_id if eos_token_id is None else eos_token_id,
            target_token_type, length_penalty, renormalize,
        )

