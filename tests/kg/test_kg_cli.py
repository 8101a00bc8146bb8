"""`wenzhi kg ...` through the real entry point."""
from __future__ import annotations

import json

from wenzhi import cli as wenzhi


def _json_lines(out: str) -> list:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_kg_cli_end_to_end(tmp_path, kb_slice_path, data_dir, capsys):
    db = tmp_path / "cli.sqlite"
    assert wenzhi.main(["kg", "import", str(kb_slice_path), "--kb", str(db), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "lines read" in out and "rejected 0" in out

    assert wenzhi.main(["kg", "stats", "--kb", str(db)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["triples"] > 5000 and stats["import"]["reconciles"]

    assert wenzhi.main(["kg", "entity", "刘晓华", "--kb", str(db)]) == 0
    found = json.loads(capsys.readouterr().out)
    names = {e["name"] for e in found["entities"]}
    assert "刘晓华（广东工业大学教授）" in names and len(names) >= 2
    assert wenzhi.main(["kg", "entity", "刘晓华（广东工业大学教授）", "--kb", str(db)]) == 0
    one = json.loads(capsys.readouterr().out)["entities"]
    assert len(one) == 1 and ["主讲课程", "《固体物理》"] in one[0]["triples"]
    assert wenzhi.main(["kg", "entity", "没有这个实体", "--kb", str(db)]) == 1

    assert wenzhi.main(["kg", "link", "请问刘晓华的主讲课程是什么", "--kb", str(db)]) == 0
    mentions = _json_lines(capsys.readouterr().out)
    m = next(x for x in mentions if x["mention"] == "刘晓华")
    assert (m["start"], m["end"], m["entity"]) == (2, 5, "刘晓华（广东工业大学教授）")
    assert m["candidates"][0][0] == m["entity"] and 0 < m["score"] <= 1

    questions = data_dir / "kgclue" / "dev.json"
    assert wenzhi.main(["kg", "eval-linking", "--kb", str(db), "--questions", str(questions),
                        "--limit", "100", "--baseline"]) == 0
    result = _json_lines(capsys.readouterr().out)[-1]
    assert result["n"] == 100 and result["accuracy_at_1"] >= 0.9
    assert {"accuracy_at_1", "recall_at_5", "mention_found"} <= set(result["baseline"])


def test_kg_cli_missing_store(tmp_path, capsys):
    assert wenzhi.main(["kg", "stats", "--kb", str(tmp_path / "missing.sqlite")]) == 2
    assert "wenzhi kg import" in capsys.readouterr().err
