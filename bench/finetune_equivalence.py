"""Does today's `wenzhi finetune` train the same weights as an earlier revision's?

Refactoring the fine-tuning code (issue 14 item 5: the task modules, the shared training toolkit)
must not move a single weight at one process on CPU: other measurements (the SIM recipes in
bench/RESULTS.md) were taken on the earlier code. This runs the reference revision's
`qa_service/finetune.py` (read with `git show REV:PATH`, imported beside today's package) and
today's `wenzhi.qa_service.finetune` on the same small config, one after the other in this
process, and prints each task's losses and the largest weight difference.

    WENZHI_DATA=/work/shared/data python bench/finetune_equivalence.py --ref 7f72d0b
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# (name, FinetuneConfig fields): each SIM interaction and loss, NER and GEN fresh and from the SIM head
CASES = [
    ("sim-match", dict(task="sim", freeze_universal=False)),
    ("sim-full-pointwise", dict(task="sim", interaction="full", sim_loss="pointwise")),
    ("sim-late", dict(task="sim", interaction="late", freeze_universal=False)),
    ("ner-from-sim", dict(task="ner", init="sim-match")),
    ("gen", dict(task="gen", freeze_universal=False)),
]


def reference_module(rev: str, path: str):
    source = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent).stdout
    file = Path(tempfile.mkdtemp()) / "reference_finetune.py"
    file.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("reference_finetune", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def small_kb(data: Path, questions: Path, root: Path) -> Path:
    """The KB's first 5,000 lines and every triple of the questions' heads, imported."""
    from wenzhi.kg import TripleStore
    from wenzhi.qa_service.data import read_qa

    heads = {q.head for q in read_qa(questions)}
    slice_ = root / "kb.txt"
    with open(data / "kb" / "knowledge.txt", encoding="utf-8") as src, open(slice_, "w", encoding="utf-8") as dst:
        dst.writelines(line for i, line in enumerate(src) if i < 5000 or line.split("\t", 1)[0] in heads)
    TripleStore.import_files([slice_], root / "kb.sqlite")
    return root / "kb.sqlite"


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if wa.keys() != wb.keys():
        raise SystemExit(f"{a} and {b} hold different tensors")
    return max(float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].numel() else 0.0 for k in wa)


def main() -> int:
    from wenzhi.kg.datadir import data_path
    from wenzhi.qa_service import finetune as current

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="git revision whose qa_service/finetune.py is the reference")
    p.add_argument("--ref-path", default="qa_service/finetune.py")
    p.add_argument("--questions", type=int, default=200, help="first N KgCLUE train questions")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    reference = reference_module(args.ref, args.ref_path)
    root = Path(tempfile.mkdtemp(prefix="ft_equiv_"))
    train = root / "train.json"
    with open(data_path("kgclue/train.json"), encoding="utf-8") as src:
        train.write_text("".join(next(src) for _ in range(args.questions)), encoding="utf-8")
    kb = small_kb(data_path(""), train, root)
    rows, worst = [], 0.0
    for name, fields in CASES:
        reports, outs = {}, {}
        for side, module in (("reference", reference), ("current", current)):
            out = root / side / name
            init = fields.get("init")
            cfg = module.FinetuneConfig(**fields | dict(out=out, kb=kb, questions=[train], threads=1, lr=2e-3,
                                                         max_steps=args.max_steps, batch_size=args.batch_size,
                                                         epochs=2.0, init=root / side / init / "sim" if init else None))
            reports[side] = module.finetune(cfg)
            outs[side] = out / fields["task"]
        diff = max_weight_diff(outs["reference"], outs["current"])
        worst = max(worst, diff)
        rows.append({"case": name, "max_abs_weight_diff": diff,
                     **{f"{side}_losses": [r["first_loss"], r["last_loss"]] for side, r in reports.items()}})
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"ref": args.ref, "cases": len(rows), "max_abs_weight_diff": worst}))
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
