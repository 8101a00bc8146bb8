"""Why do the BERT-derived models (F0, FA, FE) score a third of A-E's CLUENER F1? Issue 15 asked
whether it is the imported post-LN/absolute-position architecture under the ablation's fine-tune
or a label/offset bug for imported tokenizers. This fine-tunes CLUENER exactly as the ablation does
(model/downstream.py: 300 steps, lr 2e-3, the whole model) from a RANDOM init of the ablation's
shape in each architecture family, so no import and no pretraining is involved:

    WENZHI_DATA=../shared/data nice -n 19 .venv/bin/python bench/knowledge_ablation_archcheck.py \
        post/absolute pre/absolute post/rotary [pre/rotary]

(pre/rotary with seed 0 is the ablation's R seed 0.) One JSON line per family.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

SHAPE = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, num_universal_layers=2, num_nlu_layers=1,
             num_nlg_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def main() -> int:
    from accelerate.utils import set_seed

    from wenzhi.model import downstream
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining
    from wenzhi.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    for family in sys.argv[1:] or ["post/absolute", "pre/absolute", "post/rotary"]:
        norm, positions = family.split("/")
        with tempfile.TemporaryDirectory(prefix="archcheck-") as tmp:
            set_seed(0)  # the ablation's seed-0 init, in this family
            WenzhiForPretraining(WenzhiConfig(vocab_size=len(tokenizer), norm_placement=norm,
                                              position_embedding_type=positions, **SHAPE)).save_pretrained(tmp)
            shutil.copyfile(tokenizer.name_or_path, Path(tmp) / "vocab.txt")
            report = downstream.run(downstream.DownstreamConfig(
                task="cluener", init=tmp, max_steps=300, seed=0, learning_rate=2e-3, freeze_universal=False,
                eval_limit=3000, threads=1))
        print(json.dumps({"norm": norm, "positions": positions, "f1": report["entity_f1"],
                          "precision": report["precision"], "recall": report["recall"],
                          "last_loss": report["last_loss"], "cpu_seconds": report["cpu_seconds"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
