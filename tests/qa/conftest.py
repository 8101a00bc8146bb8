"""The QA tests' tiny model, fine-tuned once per session (the pipeline's and the service's tests
share it)."""
import pytest

from wenzhi.qa_service.finetune import FinetuneConfig, finetune


@pytest.fixture(scope="session")
def model_dir(data_dir, kb_db, tmp_path_factory):
    """SIM (three epochs: its first steps move the matching head away from where its untrained
    similarity starts), then NER (one epoch) and GEN (three) on its frozen universal module, on 300
    KgCLUE train questions whose heads are in the KB slice; batches of 16."""
    root = tmp_path_factory.mktemp("qa_model")
    train = root / "train.json"
    with open(data_dir / "kgclue" / "train.json", encoding="utf-8") as src:
        train.write_text("".join(next(src) for _ in range(300)), encoding="utf-8")  # heads in the slice
    out = root / "model"
    common = dict(out=out, kb=kb_db, questions=[train], max_steps=40, batch_size=16, lr=2e-3, threads=1)
    sim = finetune(FinetuneConfig(task="sim", freeze_universal=False, **common | {"max_steps": 60, "epochs": 3}))
    assert sim["last_loss"] < sim["first_loss"]  # it learnt something
    for task, epochs in (("ner", 1), ("gen", 3)):
        report = finetune(FinetuneConfig(task=task, init=out / "sim", **common | {"max_steps": 60, "epochs": epochs}))
        assert report["last_loss"] < report["first_loss"]
    return out
