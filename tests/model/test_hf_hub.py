"""Hub-style checkpoints: every folder wenzhi saves loads with transformers' Auto classes and
pipelines natively once `wenzhi` is imported, and with `trust_remote_code=True` in a Python that
cannot import wenzhi at all; fine-tuning takes a wenzhi checkpoint or a BERT folder as --init."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wenzhi.model.modeling import WenzhiConfig, WenzhiForMaskedLM, WenzhiForPretraining

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py
SMALL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_universal_layers=2, num_nlu_layers=1,
             num_nlg_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = {"scratch": {}, "bert-style": {"norm_placement": "post", "position_embedding_type": "absolute", "use_task_id": True}}
TEXT = "我很好奇龙编站的坐标是什么[MASK]？"

# Runs in a fresh interpreter that refuses to import wenzhi: the saved code must be self-contained.
REMOTE = textwrap.dedent('''
    import importlib.abc, json, sys
    class NoWenzhi(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "wenzhi":
                raise ImportError("this interpreter must not import " + name)
    sys.meta_path.insert(0, NoWenzhi())
    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer, pipeline)
    out = {}
    for folder in sys.argv[1:]:
        kw = dict(trust_remote_code=True)
        config = AutoConfig.from_pretrained(folder, **kw)
        classes = [type(a.from_pretrained(folder, **kw)).__name__ for a in
                   (AutoModel, AutoModelForMaskedLM, AutoModelForTokenClassification, AutoModelForSequenceClassification)]
        fill = pipeline("fill-mask", model=folder, **kw)
        features = pipeline("feature-extraction", model=folder, **kw)
        out[folder] = {"config": type(config).__name__, "classes": classes,
                       "fill": [(p["token"], round(p["score"], 5)) for p in fill(sys.stdin.readline().strip() or
                                "我很好奇龙编站的坐标是什么[MASK]？", top_k=3)],
                       "features": torch.tensor(features("龙编站")).shape[-1],
                       "wenzhi_modules": [m for m in sys.modules if m.split(".")[0] == "wenzhi"]}
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_dir):
    """A saved pretraining checkpoint of each block family, with the BERT Chinese tokenizer."""
    from wenzhi.model.checkpoint import save_model_folder
    from wenzhi.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(None)
    root = tmp_path_factory.mktemp("hub")
    out = {}
    for name, family in FAMILIES.items():
        torch.manual_seed(0)
        model = WenzhiForPretraining(WenzhiConfig(vocab_size=len(tokenizer), **SMALL, **family))
        out[name] = save_model_folder(model, root / name, tokenizer)
    return out


def reference_fill(folder, top_k=3):
    """Top tokens for TEXT's [MASK] from wenzhi's own classes."""
    from wenzhi.model.pretrained import checkpoint_tokenizer

    tokenizer = checkpoint_tokenizer(folder)
    model = WenzhiForPretraining.from_pretrained(folder).eval()
    enc = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, enc["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
    return logits.softmax(-1).topk(top_k)


def test_saved_folder_loads_without_wenzhi_through_remote_code(checkpoints):
    for folder in checkpoints.values():
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "modeling.py", "configuration.py"} <= files
        assert set(json.loads((folder / "config.json").read_text())["auto_map"]) >= {
            "AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForTokenClassification",
            "AutoModelForSequenceClassification"}
        for code in folder.glob("*.py"):  # self-contained: no import of wenzhi anywhere in the saved code
            imported = {node.module if isinstance(node, ast.ImportFrom) else alias.name
                        for node in ast.walk(ast.parse(code.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                        for alias in node.names if not isinstance(node, ast.ImportFrom) or node.level == 0}
            assert not {m for m in imported if m and m.split(".")[0] == "wenzhi"}, code
    env = os.environ | {"HF_MODULES_CACHE": str(next(iter(checkpoints.values())).parent / "hf_modules")}
    done = subprocess.run([sys.executable, "-c", REMOTE, *map(str, checkpoints.values())], input=TEXT + "\n",
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, folder in checkpoints.items():
        got = result[str(folder)]
        assert got["config"] == "WenzhiConfig" and got["wenzhi_modules"] == []
        assert got["classes"] == ["WenzhiModel", "WenzhiForMaskedLM", "WenzhiForTokenClassification",
                                  "WenzhiForSequencePairClassification"]
        assert got["features"] == SMALL["hidden_size"]
        scores, tokens = reference_fill(folder)
        assert [t for t, _ in got["fill"]] == tokens.tolist(), name
        assert [s for _, s in got["fill"]] == pytest.approx(scores.tolist(), abs=1e-4)


def test_native_auto_classes_and_pipelines_after_import_wenzhi(checkpoints):
    from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining,
                              AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer,
                              pipeline)

    folder = checkpoints["bert-style"]
    assert type(AutoConfig.from_pretrained(folder)) is WenzhiConfig  # registered, no remote code
    base = AutoModel.from_pretrained(folder).eval()
    assert type(base).__module__ == "wenzhi.model.modeling"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(["龙编站的坐标", "刘晓华"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = base(**enc, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, enc["input_ids"].shape[1], SMALL["hidden_size"])
    assert len(out.hidden_states) == 1 + SMALL["num_universal_layers"] + SMALL["num_nlu_layers"]
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    mlm = AutoModelForMaskedLM.from_pretrained(folder).eval()
    pretraining = AutoModelForPreTraining.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(mlm(**enc).logits, pretraining(**enc).logits)
    assert isinstance(mlm, WenzhiForMaskedLM)
    ner = AutoModelForTokenClassification.from_pretrained(folder, num_labels=3)
    sim = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    assert ner(**enc).logits.shape[-1] == 3 and sim(**enc).logits.shape == (2, 1)
    fill = pipeline("fill-mask", model=folder)
    scores, tokens = reference_fill(folder)
    assert [p["token"] for p in fill(TEXT, top_k=3)] == tokens.tolist()
    features = pipeline("feature-extraction", model=folder)
    with torch.no_grad():
        alone = base(**tokenizer("龙编站", return_tensors="pt")).last_hidden_state[0]
    assert torch.tensor(features("龙编站"))[0] == pytest.approx(alone, abs=1e-5)


def test_registration_is_lazy_and_index_build_takes_a_wenzhi_checkpoint(checkpoints, kb_db, tmp_path):
    """`import wenzhi` does not import torch; `wenzhi index build --encoder <wenzhi checkpoint>`
    works in a fresh process (it crashed with 'model type wenzhi not recognised', issue 13 item 7)."""
    lazy = subprocess.run([sys.executable, "-c", "import sys, wenzhi, wenzhi.cli; wenzhi.cli.build_parser(); "
                           "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert lazy.stdout.strip() == "[]", lazy.stderr[-2000:]
    out = tmp_path / "dense"
    done = subprocess.run([sys.executable, "-m", "wenzhi", "index", "build", "--kind", "entities", "--kb", str(kb_db),
                           "--limit", "50", "--encoder", str(checkpoints["scratch"]), "--output", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["count"] == 50


def test_finetune_takes_a_wenzhi_checkpoint_or_a_bert_folder(checkpoints, kb_db, data_dir, tmp_path):
    """Every `wenzhi finetune` task loads --init through the one loader: the heads keep the
    checkpoint's encoder (a zero learning rate leaves it as it was), and each saved head folder
    carries its tokenizer and loads with the Auto classes."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, BertConfig, BertModel

    from wenzhi.model.pretrained import InitError
    from wenzhi.qa_service.finetune import FinetuneConfig, finetune

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=21128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    bert.save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "vocab.txt").write_bytes((data_dir / "vocab" / "bert_chinese_vocab.txt").read_bytes())
    common = dict(kb=kb_db, questions=[data_dir / "kgclue" / "dev.json"], limit=16, max_steps=1, batch_size=4,
                  lr=0.0, threads=1, freeze_universal=False)
    out = tmp_path / "qa"
    finetune(FinetuneConfig(task="ner", out=out, init=checkpoints["bert-style"], **common))
    for task in ("sim", "gen"):
        finetune(FinetuneConfig(task=task, out=out, init=tmp_path / "bert", interaction="full", **common))
    tokenizer = AutoTokenizer.from_pretrained(out / "sim")
    enc = tokenizer(["龙编站的坐标是什么", "刘晓华"], padding=True, return_tensors="pt")
    from wenzhi.model.modeling import WenzhiForPrefixLM, WenzhiForSequencePairClassification

    with torch.no_grad():
        ref = bert(**enc).last_hidden_state
        for head in (WenzhiForSequencePairClassification.from_pretrained(out / "sim"),
                     WenzhiForPrefixLM.from_pretrained(out / "gen")):
            got = head.eval().wenzhi(**enc).last_hidden_state
            assert float((got - ref)[enc["attention_mask"].bool()].abs().max()) <= 1e-4
    for task in ("ner", "sim", "gen"):
        assert {"tokenizer.json", "vocab.txt", "modeling.py", "finetune.json"} <= {p.name for p in (out / task).iterdir()}
    assert AutoModelForTokenClassification.from_pretrained(out / "ner").num_labels == 3
    with pytest.raises(ValueError, match="--interaction full"):  # cached relation states need rotary pre-LN
        finetune(FinetuneConfig(task="sim", out=tmp_path / "late", init=tmp_path / "bert", interaction="late", **common))
    with pytest.raises(InitError, match="no model"):
        finetune(FinetuneConfig(task="ner", out=tmp_path / "x", init=tmp_path, **common))
