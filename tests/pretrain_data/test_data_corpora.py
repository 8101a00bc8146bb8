import json

import pytest

from wenzhi.model.corpora import (kdconv_pairs, named_entity_spans, parse_people_daily_line, read_agrikg,
                           read_jsonl, read_kdconv)


def test_people_daily_text_and_tags(people_daily_docs):
    text, words = parse_people_daily_line("中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr")
    assert text == "中共中央总书记、国家主席江泽民"
    assert [text[s:e] for s, e in named_entity_spans(words)] == ["中共中央", "江泽民"]
    for doc in people_daily_docs:
        assert "".join(doc.text[s:e] for s, e, _ in doc.words) == doc.text
        assert "/" not in doc.text or "/" in "".join(doc.text[s:e] for s, e, t in doc.words if t == "w")


def test_agrikg_pairs_mention_head_and_tail(data_dir):
    pairs = []
    for p in read_agrikg(data_dir / "corpus" / "agrikg_distant_supervision.tsv"):
        pairs.append(p)
        if len(pairs) == 500:
            break
    assert len(pairs) == 500
    assert all(p.head in p.sentence and p.tail in p.sentence and p.relation for p in pairs)


def test_kdconv_dialogues_and_grounded_turns(data_dir):
    path = data_dir / "kdconv" / "film" / "dev.json"
    docs = list(read_kdconv(path))
    assert len(docs) == 150 and all(d.text for d in docs)
    pairs = list(kdconv_pairs(path))
    assert len(pairs) > 500
    assert all(p.tail in p.sentence and "（" not in p.head for p in pairs)


def test_jsonl_reader_reports_bad_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "你好"}, ensure_ascii=False) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"c.jsonl:2"):
        list(read_jsonl(path))
