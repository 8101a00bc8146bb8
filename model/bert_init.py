"""Initialise a wenzhi model from a Hugging Face BERT-family checkpoint directory (continued pretraining).

What maps (BERT layer i -> wenzhi block j):
  embeddings.word_embeddings          -> embeddings.word (same vocabulary required)
  embeddings.token_type_embeddings    -> embeddings.token_type rows 0-1; rows >= 2 (wenzhi's triple /
                                         retrieved segments) start as a copy of BERT's segment 1
  embeddings.LayerNorm                -> embeddings.norm
  attention.self.{query,key,value}    -> attn.qkv (concatenated)
  attention.output.dense              -> attn.out
  attention.output.LayerNorm          -> ffn_norm   (BERT normalises this sum right before its FFN)
  intermediate.dense / output.dense   -> ffn.up / ffn.down
  output.LayerNorm of layer i - 1     -> attn_norm of block i (block 0: identity, the embedding LN
                                         already normalised its input); of the last layer of a branch
                                         -> nlu_norm / nlg_norm
  cls.predictions.transform + bias    -> mlm_head (when the checkpoint has an MLM head)
BERT layers 0..N-1 fill the universal module; the next ones fill the NLU module and, as a copy, the
NLG module. What does NOT map: absolute position embeddings (wenzhi uses rotary positions, so
position information is relearned), the pooler, NSP head. BERT is post-LN and wenzhi pre-LN, so
the initialised network is not numerically the BERT function: the mapping gives well-scaled
pretrained weights in the right places, to be adapted by continued pretraining.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def _load_bert_state(bert_dir: Path) -> dict[str, torch.Tensor]:
    if (bert_dir / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(bert_dir / "model.safetensors"))
    elif (bert_dir / "model.safetensors.index.json").exists():
        from safetensors.torch import load_file

        index = json.loads((bert_dir / "model.safetensors.index.json").read_text())
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(bert_dir / shard)))
    elif (bert_dir / "pytorch_model.bin").exists():
        state = torch.load(bert_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {bert_dir}")
    # BertForMaskedLM / BertForPreTraining prefix the encoder with "bert."
    return {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}


def wenzhi_from_bert(cls, bert_dir, **config_overrides):
    from transformers import AutoConfig

    from wenzhi.model.modeling import WenzhiConfig

    bert_dir = Path(bert_dir)
    bert = AutoConfig.from_pretrained(bert_dir)
    n_bert = bert.num_hidden_layers
    n_universal = config_overrides.pop("num_universal_layers", max(n_bert - 2, 1))
    n_task = config_overrides.pop("num_nlu_layers", max(min(2, n_bert - n_universal), 0))
    config = WenzhiConfig(
        vocab_size=bert.vocab_size,
        hidden_size=bert.hidden_size,
        num_attention_heads=bert.num_attention_heads,
        intermediate_size=bert.intermediate_size,
        hidden_act=bert.hidden_act,
        layer_norm_eps=bert.layer_norm_eps,
        pad_token_id=bert.pad_token_id if bert.pad_token_id is not None else 0,
        num_universal_layers=n_universal,
        num_nlu_layers=n_task,
        num_nlg_layers=config_overrides.pop("num_nlg_layers", n_task),
        **config_overrides,
    )
    model = cls(config)
    state = _load_bert_state(bert_dir)
    base = model.wenzhi if hasattr(model, "wenzhi") else model
    mapped: list[str] = []

    def copy(dst: torch.Tensor, src_key: str, rows: slice | None = None):
        src = state[src_key]
        with torch.no_grad():
            (dst if rows is None else dst[rows]).copy_(src if rows is None else src[: dst[rows].shape[0]])
        mapped.append(src_key)

    e = "embeddings."
    copy(base.embeddings.word.weight, e + "word_embeddings.weight")
    types = state[e + "token_type_embeddings.weight"]
    with torch.no_grad():
        n = min(types.shape[0], config.type_vocab_size)
        base.embeddings.token_type.weight[:n].copy_(types[:n])
        base.embeddings.token_type.weight[n:].copy_(types[n - 1].expand_as(base.embeddings.token_type.weight[n:]))
    mapped.append(e + "token_type_embeddings.weight")
    copy(base.embeddings.norm.weight, e + "LayerNorm.weight")
    copy(base.embeddings.norm.bias, e + "LayerNorm.bias")

    def fill(block, i: int):
        p = f"encoder.layer.{i}."
        with torch.no_grad():
            for part in ("weight", "bias"):
                qkv = [state[f"{p}attention.self.{n}.{part}"] for n in ("query", "key", "value")]
                getattr(block.attn.qkv, part).copy_(torch.cat(qkv, 0))
                mapped.extend(f"{p}attention.self.{n}.{part}" for n in ("query", "key", "value"))
            for dst, src in (
                (block.attn.out, "attention.output.dense"),
                (block.ffn_norm, "attention.output.LayerNorm"),
                (block.ffn.up, "intermediate.dense"),
                (block.ffn.down, "output.dense"),
            ):
                copy(dst.weight, f"{p}{src}.weight")
                copy(dst.bias, f"{p}{src}.bias")
            if i > 0:
                copy(block.attn_norm.weight, f"encoder.layer.{i - 1}.output.LayerNorm.weight")
                copy(block.attn_norm.bias, f"encoder.layer.{i - 1}.output.LayerNorm.bias")

    def fill_norm(norm, i: int):
        copy(norm.weight, f"encoder.layer.{i}.output.LayerNorm.weight")
        copy(norm.bias, f"encoder.layer.{i}.output.LayerNorm.bias")

    for j, block in enumerate(base.universal_layers[: min(n_universal, n_bert)]):
        fill(block, j)
    for layers, norm in ((base.nlu_layers, base.nlu_norm), (base.nlg_layers, base.nlg_norm)):
        last = min(n_universal, n_bert) - 1
        for j, block in enumerate(layers):
            i = n_universal + j
            if i >= n_bert:
                break
            fill(block, i)
            last = i
        if last >= 0:
            fill_norm(norm, last)
    head = getattr(model, "mlm_head", None)
    t = "cls.predictions."
    if head is not None and t + "transform.dense.weight" in state:
        copy(head.dense.weight, t + "transform.dense.weight")
        copy(head.dense.bias, t + "transform.dense.bias")
        copy(head.norm.weight, t + "transform.LayerNorm.weight")
        copy(head.norm.bias, t + "transform.LayerNorm.bias")
        copy(head.bias, t + "bias")
    model.bert_init_report = {
        "mapped": sorted(set(mapped)),
        "unmapped": sorted(k for k in state if k not in set(mapped)),
    }
    return model
