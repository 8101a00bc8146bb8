"""`wenzhi pretrain convert`: Hugging Face BERT/ERNIE folders into wenzhi checkpoints and back.

    wenzhi pretrain convert --from-hf bert-folder --output runs/bert-wenzhi
    wenzhi pretrain convert --to-hf runs/bert-wenzhi --output runs/bert-again

`--from-hf` imports with model/hf_convert.py into a WenzhiForPretraining folder (the NLG module and
LM head start from the top layers and the MLM head), with the source's vocabulary as the
tokenizer. `--to-hf` writes the NLU path and MLM head as a plain `BertForMaskedLM` folder (only a
post-LN, absolute-position model is a BERT). Both check their work: the source and the result run
on the same random batch, and a max abs difference of the last hidden states or MLM logits above
`--tolerance` is an error (exit 1) and writes nothing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="SRC", help="a Hugging Face BERT/ERNIE folder to import")
    source.add_argument("--to-hf", metavar="SRC", help="a wenzhi checkpoint to write as BertForMaskedLM")
    parser.add_argument("--output", required=True, help="the folder to write (replaced atomically)")
    parser.add_argument("--nlu-layers", type=int, help="--from-hf: source layers that form the NLU module "
                        "(the top ones; default min(2, N // 2)); the rest are universal")
    parser.add_argument("--nlg-layers", type=int, help="--from-hf: NLG layers, copies of the NLU ones (default: as many)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest max abs difference accepted")


def probe_batch(vocab_size: int, seed: int = 0):
    """A fixed batch: two rows of random ids, the second right-padded, both segments used."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(106, vocab_size - 1), vocab_size, (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    return ids, mask, types


def max_differences(reference, candidate, vocab_size: int) -> dict:
    """Max abs difference of the last hidden states and the MLM logits on `probe_batch`."""
    import torch

    ids, mask, types = probe_batch(vocab_size)
    keep = mask.bool()
    with torch.no_grad():
        a = reference(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        b = candidate(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    out = {"hidden": float((a.hidden_states[-1] - b.hidden_states[-1])[keep].abs().max())}
    if getattr(a, "logits", None) is not None and getattr(b, "logits", None) is not None:
        out["logits"] = float((a.logits - b.logits)[keep].abs().max())
    return out


def from_hf(src: str, output: str, tolerance: float, **split) -> dict:
    import transformers

    from wenzhi.model.checkpoint import save_model_folder
    from wenzhi.model.modeling import WenzhiForPretraining
    from wenzhi.model.pretrained import checkpoint_tokenizer, load_for_init

    model, report = load_for_init(WenzhiForPretraining, src, **{k: v for k, v in split.items() if v is not None})
    tokenizer = checkpoint_tokenizer(src)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"{src}: vocab.txt has {len(tokenizer)} tokens, the embeddings {model.config.vocab_size}")
    has_head = "mlm_head.dense.weight" not in report["fresh"]
    auto = transformers.AutoModelForMaskedLM if has_head else transformers.AutoModel
    reference = auto.from_pretrained(src).eval()
    candidate = model.eval() if has_head else model.wenzhi.eval()
    report["max_abs_diff"] = max_differences(reference, candidate, model.config.vocab_size)
    _check(report["max_abs_diff"], tolerance)
    save_model_folder(model, Path(output), tokenizer)
    return report


def to_hf(src: str, output: str, tolerance: float) -> dict:
    from wenzhi.model.hf_convert import to_bert
    from wenzhi.model.modeling import WenzhiForMaskedLM
    from wenzhi.model.pretrained import checkpoint_tokenizer, load_for_init
    from wenzhi.model.tokenizer import save_tokenizer
    from wenzhi.retrieval.atomic import atomic_directory

    model, report = load_for_init(WenzhiForMaskedLM, src)
    if any(k.startswith("mlm_head.") for k in report["fresh"]):
        raise ValueError(f"{src} has no MLM head to export (a fine-tuned task head?); export a pretraining checkpoint")
    bert, info = to_bert(model.eval())
    report |= info
    report["max_abs_diff"] = max_differences(model, bert, model.config.vocab_size)
    _check(report["max_abs_diff"], tolerance)
    with atomic_directory(output) as tmp:
        bert.save_pretrained(tmp)
        save_tokenizer(checkpoint_tokenizer(src), tmp, model.config.max_position_embeddings)
    return report


def _check(diffs: dict, tolerance: float) -> None:
    worst = max(diffs.values())
    if worst > tolerance:
        raise ValueError(f"the converted model differs from its source by {worst:.3g} (> {tolerance}): {diffs}")


def main(args: argparse.Namespace) -> int:
    from wenzhi.model.hf_convert import ConversionError
    from wenzhi.model.pretrained import InitError

    try:
        if args.from_hf:
            report = from_hf(args.from_hf, args.output, args.tolerance,
                             num_nlu_layers=args.nlu_layers, num_nlg_layers=args.nlg_layers)
        else:
            report = to_hf(args.to_hf, args.output, args.tolerance)
    except (InitError, ConversionError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    report["output"] = str(Path(args.output).resolve())
    print(json.dumps(report, ensure_ascii=False))
    return 0
