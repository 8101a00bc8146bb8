import re

from wenzhi.model.tokenizer import load_tokenizer, train_tokenizer

MIXED = ["iPhone12 Pro售价6999元", "１９９８年ＣＰＵ价格下降３０％", "访问www.smallstonesoft.com交流",
         "COVID-19疫情", "Ryan Gosling主演了La La Land", "版本v2.3.1发布，速度提升1.5x", "2900万美元"]


def test_numbers_and_latin_never_unk(tokenizer):
    for text in MIXED:
        enc = tokenizer(text, add_special_tokens=False)
        assert tokenizer.unk_token_id not in enc["input_ids"], (text, tokenizer.convert_ids_to_tokens(enc["input_ids"]))


def test_latin_word_splits_into_wordpieces(tokenizer):
    tokens = tokenizer.tokenize("smallstonesoft")
    assert len(tokens) > 1 and tokens[0] == "small" and all(t.startswith("##") for t in tokens[1:])


def test_offsets_point_into_original_text(tokenizer):
    text = "江泽民１９９８年发表ＣＰＵ讲话"  # full-width forms are normalised, offsets stay on the original
    enc = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    pieces = [text[s:e] for s, e in enc["offset_mapping"][1:-1]]
    assert pieces == ["江", "泽", "民", "１９９８", "年", "发", "表", "ＣＰＵ", "讲", "话"]
    assert tokens[4] == "1998" and tokens[8] == "cpu"


def test_real_text_unk_only_for_rare_characters(tokenizer, review_lines):
    enc = tokenizer(review_lines, add_special_tokens=False, return_offsets_mapping=True)
    total = unk = 0
    for line, ids, offsets in zip(review_lines, enc["input_ids"], enc["offset_mapping"]):
        total += len(ids)
        for i, (s, e) in zip(ids, offsets):
            if i == tokenizer.unk_token_id:
                unk += 1
                assert not re.search(r"[A-Za-z0-9]", line[s:e]), line[s:e]
    assert total > 10000 and unk / total < 0.002


def test_train_vocabulary_from_corpus(tmp_path, review_lines):
    tok = train_tokenizer(review_lines, tmp_path / "tok", vocab_size=1500)
    assert (tmp_path / "tok" / "vocab.txt").exists()
    for text in MIXED[:3] + ["QWERTY zebra 1234567890"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, (text, tok.convert_ids_to_tokens(ids))
    again = load_tokenizer(tmp_path / "tok")
    assert again(review_lines[0])["input_ids"] == tok(review_lines[0])["input_ids"]
    assert len(again) == len(tok)  # the alphabet (every character seen) may exceed vocab_size
