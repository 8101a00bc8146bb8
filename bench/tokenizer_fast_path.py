"""The tokenisation fast path (model/tokenizer.py `CharTableEncoder`) against the Rust tokenizer's
`encode_batch` on the whole shared corpus: every text's ids and offsets compared, and the CPU
seconds of each, interleaved batch by batch.

    WENZHI_DATA=../shared/data .venv/bin/python bench/tokenizer_fast_path.py [--batch 4096]

Texts: every non-empty line of corpus/*.txt and corpus/*.tsv as it is in the file (People's
Daily with its POS tags, reviews, AgriKG rows), People's Daily paragraphs as `pretrain prepare`
reads them, and every line of kb/knowledge.txt. One thread (TOKENIZERS_PARALLELISM=false).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402


def corpus() -> dict[str, list[str]]:
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.corpora import read_people_daily

    out = {}
    for name in sorted(os.listdir(data_path("corpus"))):
        with open(data_path(f"corpus/{name}"), encoding="utf-8") as fh:
            out[name] = [line.rstrip("\n") for line in fh if line.strip()]
    out["people_daily (as prepare reads it)"] = [d.text for d in read_people_daily(data_path("corpus/people_daily_1998_pos.txt"))]
    with open(data_path("kb/knowledge.txt"), encoding="utf-8") as fh:
        out["kb/knowledge.txt"] = [line.rstrip("\n") for line in fh if line.strip()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args()
    from wenzhi.model.tokenizer import CharTableEncoder, load_tokenizer

    backend = load_tokenizer().backend_tokenizer
    encoder = CharTableEncoder(backend)
    result = {"supports": CharTableEncoder.supports(backend), "sources": {}}
    for name, texts in corpus().items():
        fast_s = ref_s = 0.0
        differ = []
        for i in range(0, len(texts), args.batch):
            batch = texts[i : i + args.batch]
            c = time.process_time()
            fast = encoder.encode_batch(batch)
            fast_s += time.process_time() - c
            c = time.process_time()
            ref = [(np.array(e.ids, np.int32), np.array(e.offsets, np.int64).reshape(-1, 2))
                   for e in backend.encode_batch(batch, add_special_tokens=False)]
            ref_s += time.process_time() - c
            for j, ((ids, offsets), (ref_ids, ref_offsets)) in enumerate(zip(fast, ref)):
                if not (np.array_equal(ids, ref_ids) and np.array_equal(offsets, ref_offsets)):
                    differ.append(i + j)
        chars = sum(map(len, texts))
        result["sources"][name] = {"texts": len(texts), "chars": chars, "texts_differing": len(differ),
                                   "first_differing": [texts[k][:80] for k in differ[:3]],
                                   "fast_chars_per_cpu_s": round(chars / fast_s), "reference_chars_per_cpu_s": round(chars / ref_s),
                                   "ratio": round(ref_s / fast_s, 2)}
        print(name, json.dumps(result["sources"][name], ensure_ascii=False), flush=True)
    sources = result["sources"].values()
    result["texts"] = sum(s["texts"] for s in sources)
    result["texts_differing"] = sum(s["texts_differing"] for s in sources)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
