"""KgCLUE's metric against hand-computed figures (baselines/evaluate_f1_em.py semantics)."""
import pytest

from wenzhi.qa_service.metric import f1_sim, kgclue_scores, lcs_length, normalize, score_one

GOLD = "刘晓华（广东工业大学教授） ||| 主讲课程 ||| 《固体物理》"


def test_lcs_is_a_subsequence_not_a_substring():
    assert lcs_length("abcd", "acbd") == 3  # a-b-d or a-c-d; the longest common substring is 1
    assert lcs_length("", "abc") == 0
    assert lcs_length("固体物理", "《固体物理》") == 4
    assert f1_sim("abcd", "acbd") == pytest.approx(0.75)  # 2*3 / (4+4)
    assert f1_sim("", "") == 0.0  # as in the reference: two empty strings score 0


def test_normalisation_lowercases_and_collapses_whitespace_only():
    assert normalize("  ABC \t def\n") == "abc def"
    assert normalize("ＡＢＣ") == "ａｂｃ"  # no width folding: the reference does none
    assert score_one("X ||| Y ||| Hello   World", "x ||| y ||| hello world")["em_all"] == 1.0


def test_partial_answer_hand_checked():
    s = score_one("刘晓华 ||| 主讲课程 ||| 固体物理", GOLD)
    assert s["em_s"] == 0.0 and s["em_p"] == 1.0 and s["em_o"] == 0.0 and s["em_all"] == 0.0
    assert s["f1_s"] == pytest.approx(2 * 3 / (3 + 13))  # 刘晓华 in 刘晓华（广东工业大学教授）
    assert s["f1_o"] == pytest.approx(0.8)  # 2*4 / (4+6)
    # All compares the concatenations S+P+O: 3+4+4 = 11 chars vs 13+4+6 = 23, LCS 11
    assert s["f1_all"] == pytest.approx(2 * 11 / (11 + 23))


def test_corpus_score_is_half_em_o_plus_half_f1_o():
    out = kgclue_scores([GOLD, "刘晓华 ||| 主讲课程 ||| 固体物理"], [GOLD, GOLD])
    assert out["em_o"] == pytest.approx(50.0)
    assert out["f1_o"] == pytest.approx(90.0)  # (1.0 + 0.8) / 2
    assert out["score"] == pytest.approx(70.0)
    assert out["em_p"] == pytest.approx(100.0)


def test_unanswered_questions_cost_points_and_lengths_must_match():
    out = kgclue_scores(["", None], [GOLD, GOLD])
    assert out["score"] == 0.0 and out["em_all"] == 0.0
    with pytest.raises(ValueError):
        kgclue_scores([GOLD], [GOLD, GOLD])
