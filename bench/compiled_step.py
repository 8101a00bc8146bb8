"""A compiled pretraining step on CPU, this checkout against another one, in alternating processes.

    git worktree add /tmp/ref <commit>
    python bench/compiled_step.py --reference /tmp/ref --rounds 2

Each process builds the same model (hidden 256, 2 universal + 2 NLU + 1 NLG layers, vocabulary
8,000), compiles it as that checkout's trainer does (`model/compiling.py` where the checkout has
it, plain `torch.compile` otherwise), runs 4 warm-up and 20 timed MLM + LM steps on 16 rows of 128
tokens (3 packed documents per row) with AdamW, one thread, and reports seconds per step, the
warm-up (mostly compiling) and how many graphs dynamo made. CPU figures only say that a change did
not slow the compiled step down and how many graphs it takes; the speed that matters is a GPU's
(bench/gpu_pretrain.py --compile).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def one_run(root: Path) -> dict:
    # The checkout's folders as the `wenzhi` package (what pyproject's package-dir does); submodules
    # are looked up by path so that an installed (editable) wenzhi cannot answer for the reference.
    package = types.ModuleType("wenzhi")
    package.__path__ = [str(root)]
    sys.modules["wenzhi"] = package
    import torch
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining

    if (root / "model" / "compiling.py").exists():
        from wenzhi.model.compiling import compile_for_training
    else:
        compile_for_training = torch.compile
    torch.manual_seed(0)
    config = WenzhiConfig(vocab_size=8000, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                          num_universal_layers=2, num_nlu_layers=2, num_nlg_layers=1)
    model = WenzhiForPretraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = compile_for_training(model)

    def batch(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, 8000, (16, 128), generator=g)
        masked = torch.rand(16, 128, generator=g) < 0.15
        return dict(input_ids=torch.where(masked, 3, ids), labels=torch.where(masked, ids, -100),
                    document_ids=(torch.arange(128) * 3 // 128).expand(16, 128).contiguous(),
                    kind=torch.zeros(16, dtype=torch.long), lm_prefix_lengths=torch.full((16,), 20))

    batches = [batch(seed) for seed in range(4)]

    def step(b: dict) -> None:
        forward(**b).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t = time.perf_counter()
    for b in batches:
        step(b)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(20):
        step(batches[i % 4])
    return {"checkout": str(root), "step_s": round((time.perf_counter() - t) / 20, 3), "warmup_s": round(warm_s, 1),
            "graphs": counters["stats"]["unique_graphs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout (git worktree) to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child process: measure this checkout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one.resolve())))
        return
    runs = []
    for round_ in range(args.rounds):
        for root in (args.reference.resolve(), HERE):
            done = subprocess.run([sys.executable, __file__, "--reference", str(root), "--one", str(root)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {runs[-1]}", flush=True)
    mine = [r["step_s"] for r in runs if r["checkout"] == str(HERE)]
    ref = [r["step_s"] for r in runs if r["checkout"] != str(HERE)]
    print(json.dumps({"runs": runs, "reference_over_this_step_s": [round(a / b, 3) for a, b in zip(ref, mine)]}))


if __name__ == "__main__":
    main()
