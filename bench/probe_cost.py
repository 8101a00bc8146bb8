"""CPU seconds of the knowledge ablation's KB cloze probe on one pretrained model (one thread).

    WENZHI_DATA=/work/shared/data .venv/bin/python bench/probe_cost.py MODEL_DIR [--items 300 --candidates 20]

The items are the ablation's own (`knowledge_ablation.probe_items`); prints the held-out scores and the
CPU seconds of `probe.evaluate`, so a change to how the probe loads or runs a model can be timed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=20)
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import knowledge_ablation
    from wenzhi.model import probe
    from wenzhi.model.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    items = knowledge_ablation.probe_items(args.candidates, args.items)
    model = probe.load_model(args.model).eval()
    start = time.process_time()
    scores = probe.evaluate(model, load_tokenizer(args.model), items)["heldout"]
    print({"model": args.model, "class": type(model).__name__, **scores,
           "cpu_s": round(time.process_time() - start, 1)})


if __name__ == "__main__":
    main()
