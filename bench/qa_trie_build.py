"""CPU seconds of building the GEN head's KB trie (qa_service/trie.py) from a KB, one thread.

    .venv/bin/python bench/qa_trie_build.py --kb runs/demo/kb.sqlite --tokenizer runs/demo/qa/gen

Run it with two checkouts' interpreters, interleaved, to compare them (bench/RESULTS.md, issue 12, h12c).
CPU time counts every thread of the process (the tokenizer backend's too).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb", required=True)
    p.add_argument("--tokenizer", required=True, help="a head folder whose tokenizer spells the trie (the GEN head)")
    p.add_argument("--layout", default="relation-first")
    args = p.parse_args()
    import torch

    from wenzhi.kg import TripleStore
    from wenzhi.qa_service.heads import load_tokenizer_for
    from wenzhi.qa_service.trie import KBTrie

    torch.set_num_threads(1)
    store, tok = TripleStore(args.kb), load_tokenizer_for(args.tokenizer)
    cpu, wall = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        meta = KBTrie.build_from_store(store, tok, f"{tmp}/trie", layout=args.layout)
    print(json.dumps({"sequences": meta["num_sequences"], "cpu_s": round(time.process_time() - cpu, 1),
                      "wall_s": round(time.perf_counter() - wall, 1)}))


if __name__ == "__main__":
    main()
