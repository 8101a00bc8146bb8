"""rjieba against jieba (through spaCy, the pipeline before issue 14) on the pretraining text:
how often they give the same words and the same phrase units (POS chunks), and their speed in
CPU time, in one run.

    WENZHI_DATA=../shared/data python bench/segmenter_agreement.py [--lines 4000]

Text: the first --lines review lines (positive and negative, half each) and AgriKG sentences,
the text prepare segments (People's Daily comes with its own words and tags).
"""
from __future__ import annotations

import argparse
import time
from itertools import islice


def _f1(a: set, b: set) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=4000)
    args = parser.parse_args()
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.corpora import read_agrikg, read_text
    from wenzhi.model.knowledge_masking import pos_chunks
    from wenzhi.model.segment import tagged_words, word_spans

    half = args.lines // 4
    texts = [d.text for d in islice(read_text(data_path("corpus/reviews_pos.txt")), half)]
    texts += [d.text for d in islice(read_text(data_path("corpus/reviews_neg.txt")), half)]
    texts += list(dict.fromkeys(p.sentence for p in islice(read_agrikg(data_path("corpus/agrikg_distant_supervision.tsv")), 4 * half)))[: 2 * half]
    chars = sum(map(len, texts))
    word_spans(texts[0], "jieba"), tagged_words(texts[0], "jieba"), word_spans(texts[0]), tagged_words(texts[0])  # warm up
    results, seconds = {}, {}
    for name in ("jieba", "rjieba"):
        start = time.process_time()
        words = [set(map(tuple, word_spans(t, name).tolist())) for t in texts]
        seconds[name, "words"] = time.process_time() - start
        start = time.process_time()
        tagged = [tagged_words(t, name) for t in texts]
        seconds[name, "tags"] = time.process_time() - start
        results[name] = (words, [set(pos_chunks(t)) for t in tagged])
    (jw, jp), (rw, rp) = results["jieba"], results["rjieba"]
    print(f"{len(texts):,} texts, {chars:,} characters\n")
    print("| | same for the whole text | F1 over units |")
    print("|---|---|---|")
    print(f"| words | {sum(a == b for a, b in zip(jw, rw)) / len(texts):.1%} | "
          f"{_f1({(i, s) for i, w in enumerate(jw) for s in w}, {(i, s) for i, w in enumerate(rw) for s in w}):.4f} |")
    print(f"| phrase units (POS chunks) | {sum(a == b for a, b in zip(jp, rp)) / len(texts):.1%} | "
          f"{_f1({(i, s) for i, w in enumerate(jp) for s in w}, {(i, s) for i, w in enumerate(rp) for s in w}):.4f} |")
    print("\n| chars per CPU-second | jieba (spaCy) | rjieba | ratio |")
    print("|---|---|---|---|")
    for what in ("words", "tags"):
        j, r = chars / seconds["jieba", what], chars / seconds["rjieba", what]
        print(f"| {what} | {j:,.0f} | {r:,.0f} | {r / j:.1f} |")


if __name__ == "__main__":
    main()
