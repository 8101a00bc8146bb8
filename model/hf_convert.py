"""Hugging Face BERT / ERNIE checkpoints into wenzhi and back, weight for weight.

A BERT or ERNIE folder (`BertModel`, `BertForMaskedLM`, `BertForPreTraining`, `ErnieModel`,
`ErnieForMaskedLM`, ... with or without the `bert.` / `ernie.` prefix) becomes a post-LN,
absolute-position wenzhi model that computes what the source computed (configuration.py):

  embeddings.word_embeddings / position_embeddings / LayerNorm -> embeddings.word / position / norm
  embeddings.token_type_embeddings -> embeddings.token_type rows 0-1; row 2 (wenzhi's retrieved-
                                      context segment, which BERT lacks) starts as a copy of row 1
  embeddings.task_type_embeddings (ERNIE) -> embeddings.task_type
  encoder.layer.i: attention.self.{query,key,value} -> attn.qkv (concatenated)
                   attention.output.dense / LayerNorm -> attn.out / attn_norm
                   intermediate.dense, output.dense / LayerNorm -> ffn.up, ffn.down / ffn_norm
  layers 0 .. U-1 -> universal_layers; layers U .. N-1 -> nlu_layers and, as copies, nlg_layers
  cls.predictions.transform + bias -> mlm_head, and lm_head (the NLG head starts from the MLM head)
  pooler.dense -> pooler (sequence-pair head)

Not used: the NSP head (`cls.seq_relationship`), a fine-tuned source's own classifier, the pooler
where the wenzhi head has none. A source weight that is needed and missing, or one that is neither
mapped nor in that list, is an error: an import never silently starts from random weights.

The way back (`to_bert`): the NLU path of a BERT-compatible wenzhi model (post-LN, absolute
positions) as a plain `BertForMaskedLM`; ERNIE's task-type row 0 (the only task id wenzhi feeds)
is folded into the segment embeddings, which is exact because both are summed before the LN.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from wenzhi.model.modeling import WenzhiConfig

SUPPORTED_TYPES = ("bert", "ernie")
_PREFIXES = ("bert.", "ernie.")
_SELF = ("query", "key", "value")
# (wenzhi block module, source module) pairs inside one layer, each with .weight and .bias
_LAYER_PARTS = (("attn.out", "attention.output.dense"), ("attn_norm", "attention.output.LayerNorm"),
                ("ffn.up", "intermediate.dense"), ("ffn.down", "output.dense"), ("ffn_norm", "output.LayerNorm"))
_HEAD_PARTS = (("dense", "cls.predictions.transform.dense"), ("norm", "cls.predictions.transform.LayerNorm"))


class ConversionError(ValueError):
    """A checkpoint that cannot be imported or exported exactly; the message says why."""


def read_hf_config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{folder}: no readable config.json ({exc})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights: model.safetensors, its sharded index, or pytorch_model.bin loaded with
    `weights_only=True` (a pickle that would run code is refused)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "model.safetensors.index.json").exists():
        index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    if (folder / "pytorch_model.bin").exists():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError and friends: say what was refused
            raise ConversionError(f"{folder}/pytorch_model.bin: refused by the weights-only loader ({exc})") from None
    raise ConversionError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def wenzhi_config_from_hf(hf: dict, num_universal_layers: int | None = None, num_nlu_layers: int | None = None,
                          num_nlg_layers: int | None = None, **overrides) -> WenzhiConfig:
    """The wenzhi config that reproduces a BERT/ERNIE config.json. Default split of the N source
    layers: the top min(2, N // 2) are the NLU module, the rest universal; NLG copies the NLU layers."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise ConversionError(f"model_type {model_type!r} is not a BERT or ERNIE encoder ({', '.join(SUPPORTED_TYPES)})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"position_embedding_type {hf['position_embedding_type']!r}: only absolute positions import exactly")
    if hf.get("is_decoder"):
        raise ConversionError("a decoder (is_decoder: true) is not an encoder checkpoint")
    n = int(hf["num_hidden_layers"])
    nlu = min(2, n // 2) if num_nlu_layers is None else int(num_nlu_layers)
    universal = n - nlu if num_universal_layers is None else int(num_universal_layers)
    if universal + nlu != n or universal < 1 or nlu < 0:
        raise ConversionError(f"universal ({universal}) + NLU ({nlu}) layers must split the source's {n} layers")
    nlg = nlu if num_nlg_layers is None else int(num_nlg_layers)
    if nlg > nlu:
        raise ConversionError(f"{nlg} NLG layers asked for, but they start as copies of the {nlu} NLU layers")
    use_task_id = bool(hf.get("use_task_id", False)) and model_type == "ernie"
    fields = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_attention_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"], hidden_act=hf.get("hidden_act", "gelu"),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=max(3, int(hf.get("type_vocab_size", 2))),
        norm_placement="post", position_embedding_type="absolute",
        use_task_id=use_task_id, task_type_vocab_size=int(hf.get("task_type_vocab_size", 3)),
        hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0,
        num_universal_layers=universal, num_nlu_layers=nlu, num_nlg_layers=nlg,
    )
    return WenzhiConfig(**(fields | overrides))


def _strip_prefix(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def _ignorable(key: str) -> bool:
    """Source weights an import may leave unused (see the module docstring)."""
    return (key.endswith("position_ids") or key.endswith("token_type_ids") or key.startswith("cls.seq_relationship.")
            or key.startswith(("classifier.", "qa_outputs.", "pooler.")) or key == "cls.predictions.decoder.weight")


def wenzhi_state_from_hf(state: dict, config: WenzhiConfig, prefix: str = "wenzhi.") -> dict[str, tuple]:
    """{wenzhi key (backbone under `prefix`): (tensor, source keys it was built from)}."""
    src = _strip_prefix(state)
    missing: list[str] = []
    out: dict[str, tuple] = {}

    def put(key: str, *sources: str, build=None) -> None:
        absent = [s for s in sources if s not in src]
        if absent:
            missing.extend(absent)
            return
        tensors = [src[s] for s in sources]
        out[key] = (build(*tensors) if build else tensors[0], sources)

    e = "embeddings."
    put(prefix + e + "word.weight", e + "word_embeddings.weight")
    put(prefix + e + "position.weight", e + "position_embeddings.weight")
    # wenzhi's segments beyond the source's (row 2: retrieved context) start as copies of its last row
    put(prefix + e + "token_type.weight", e + "token_type_embeddings.weight",
        build=lambda t: torch.cat([t, t[-1:].expand(max(0, config.type_vocab_size - t.shape[0]), -1)]))
    if config.use_task_id:
        put(prefix + e + "task_type.weight", e + "task_type_embeddings.weight")
    for part in ("weight", "bias"):
        put(prefix + e + f"norm.{part}", e + f"LayerNorm.{part}")

    def layer(dst: str, i: int) -> None:
        p = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            put(f"{dst}attn.qkv.{part}", *(f"{p}attention.self.{n}.{part}" for n in _SELF),
                build=lambda *qkv: torch.cat(qkv, 0))
            for mine, theirs in _LAYER_PARTS:
                put(f"{dst}{mine}.{part}", f"{p}{theirs}.{part}")

    U = config.num_universal_layers
    for j in range(U):
        layer(f"{prefix}universal_layers.{j}.", j)
    for j in range(config.num_nlu_layers):
        layer(f"{prefix}nlu_layers.{j}.", U + j)
    for j in range(config.num_nlg_layers):
        layer(f"{prefix}nlg_layers.{j}.", U + j)
    missing = sorted(set(missing))  # NLG layers copy NLU ones: a gap shows twice
    if missing:
        raise ConversionError(f"the checkpoint lacks {len(missing)} encoder weights, e.g. {missing[:4]} "
                              f"(it has {len(src)} tensors: is it a BERT/ERNIE encoder?)")
    if "cls.predictions.transform.dense.weight" in src:
        decoder = src.get("cls.predictions.decoder.weight")
        if decoder is not None and not torch.equal(decoder, src["embeddings.word_embeddings.weight"]):
            raise ConversionError("the MLM decoder is not tied to the word embeddings; wenzhi's heads project with "
                                  "the word embedding matrix, so this head cannot be imported exactly")
        bias = "cls.predictions.bias" if "cls.predictions.bias" in src else "cls.predictions.decoder.bias"
        for head in ("mlm_head.", "lm_head."):
            for mine, theirs in _HEAD_PARTS:
                for part in ("weight", "bias"):
                    put(f"{head}{mine}.{part}", f"{theirs}.{part}")
            put(f"{head}bias", bias)
    if "pooler.dense.weight" in src:
        put("pooler.weight", "pooler.dense.weight")
        put("pooler.bias", "pooler.dense.bias")
    return out


def import_hf(cls, folder: str | Path, **config_overrides):
    """A wenzhi `cls` (WenzhiForPretraining, WenzhiModel, a task head) holding a BERT/ERNIE folder's
    weights, and a report {"source", "model_type", "mapped", "fresh", "unused"}; raises ConversionError."""
    folder = Path(folder)
    hf = read_hf_config(folder)
    config = wenzhi_config_from_hf(hf, **config_overrides)
    source = _strip_prefix(read_weights(folder))
    model = cls(config)
    prefix = "wenzhi." if hasattr(model, "wenzhi") else ""
    own = model.state_dict()
    mapped = {k: v for k, v in wenzhi_state_from_hf(source, config, prefix).items() if k in own}
    for key, (tensor, _) in mapped.items():
        if own[key].shape != tensor.shape:
            raise ConversionError(f"{key}: shape {tuple(tensor.shape)} in the checkpoint, {tuple(own[key].shape)} in the model")
    result = model.load_state_dict({k: t for k, (t, _) in mapped.items()}, strict=False)
    fresh = sorted(result.missing_keys)
    backbone_fresh = [k for k in fresh if k.startswith(prefix + "embeddings.") or "_layers." in k]
    if backbone_fresh:
        raise ConversionError(f"encoder weights left unset: {backbone_fresh[:4]}")
    used = {s for _, sources in mapped.values() for s in sources}
    unused = sorted(k for k in source if k not in used)
    unknown = [k for k in unused if not _ignorable(k)]
    if unknown:
        raise ConversionError(f"{len(unknown)} weights of the checkpoint have no place in wenzhi, e.g. {unknown[:4]}")
    return model, {"source": str(folder), "model_type": hf["model_type"], "mapped": len(mapped),
                   "fresh": fresh, "unused": unused}


def to_bert(model) -> tuple["transformers.BertForMaskedLM", dict]:
    """The NLU path and MLM head of a BERT-compatible wenzhi model as a `BertForMaskedLM`."""
    from transformers import BertConfig, BertForMaskedLM

    config: WenzhiConfig = model.config
    if not config.is_bert_compatible:
        raise ConversionError(
            f"this model is {config.norm_placement}-LN with {config.position_embedding_type} positions; only a post-LN "
            "model with absolute positions (an imported BERT/ERNIE, or one trained with norm_placement: post and "
            "position_embedding_type: absolute) is a BERT")
    if not hasattr(model, "mlm_head"):
        raise ConversionError(f"{type(model).__name__} has no MLM head; export a pretraining checkpoint")
    base = model.wenzhi
    bert_config = BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act, hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range, layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id, tie_word_embeddings=True,
    )
    e = base.embeddings
    types = e.token_type.weight.detach().clone()
    if e.task_type is not None:
        types += e.task_type.weight[0].detach()  # exact for task id 0, which is all wenzhi feeds
    state = {"bert.embeddings.word_embeddings.weight": e.word.weight, "bert.embeddings.position_embeddings.weight": e.position.weight,
             "bert.embeddings.token_type_embeddings.weight": types,
             "bert.embeddings.LayerNorm.weight": e.norm.weight, "bert.embeddings.LayerNorm.bias": e.norm.bias}
    H = config.hidden_size
    for i, block in enumerate([*base.universal_layers, *base.nlu_layers]):
        p = f"bert.encoder.layer.{i}."
        for part in ("weight", "bias"):
            qkv = getattr(block.attn.qkv, part)
            for n, name in enumerate(_SELF):
                state[f"{p}attention.self.{name}.{part}"] = qkv[n * H:(n + 1) * H]
            for mine, theirs in _LAYER_PARTS:
                state[f"{p}{theirs}.{part}"] = block.get_submodule(mine).get_parameter(part)
    for mine, theirs in _HEAD_PARTS:
        for part in ("weight", "bias"):
            state[f"{theirs}.{part}"] = model.mlm_head.get_submodule(mine).get_parameter(part)
    state["cls.predictions.bias"] = model.mlm_head.bias
    bert = BertForMaskedLM(bert_config)
    result = bert.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    left = [k for k in result.missing_keys if k != "cls.predictions.decoder.weight" and not k.endswith("decoder.bias")]
    if left or result.unexpected_keys:
        raise ConversionError(f"export left BERT weights unset {left[:4]} or unplaced {result.unexpected_keys[:4]}")
    bert.tie_weights()
    return bert.eval(), {"layers": config.num_hidden_layers, "folded_task_type": e.task_type is not None}
