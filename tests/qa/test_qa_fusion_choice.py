"""`wenzhi fit-fusion`'s choice rule on hand-made evidence: the simplest pipeline weights within one
standard error of the best, GEN only on a significant win on both halves, and no flip from noise."""
import numpy as np

from wenzhi.qa_service.fusion import Evidence, choose_weights

# evidence columns: link, ner, sim, gen, gen_head, mention chars, lex, no-SIM constant
SIM_RIGHT = ([0, 0, 1, 0, 0, 2, 0, 0], [0, 0, 0, 0, 0, 2, 0, 0])  # (gold row, wrong row): SIM alone decides
GEN_FIXES = ([0, 0, 0, 1, 0, 2, 0, 0], [0, 0, 0.4, 0, 0, 2, 0, 0])  # SIM slightly wrong, GEN sure of the gold
GEN_HURTS = ([0, 0, 0.4, 0, 0, 2, 0, 0], [0, 0, 0, 1, 0, 2, 0, 0])  # SIM slightly right, GEN sure of the other
LEX_FIXES = ([0, 0, 0, 0, 0, 2, 1, 0], [0, 0, 0.2, 0, 0, 2, 0, 0])  # SIM slightly wrong, the lexical rule right


def evidence(kinds: list[tuple]) -> Evidence:
    """One question per entry of `kinds` (in that order: its position decides its half), gold row first."""
    rows, gold, starts = [], [], []
    for gold_row, wrong_row in kinds:
        starts.append(len(rows))
        rows += [gold_row, wrong_row]
        gold += [True, False]
    return Evidence(np.asarray(rows, dtype=np.float64), np.asarray(gold), np.asarray(starts),
                    np.arange(len(kinds)), len(kinds))


def test_gen_stays_off_without_a_significant_win_on_both_halves():
    easy = [SIM_RIGHT] * 40
    # one question more: within one standard error (1 discordant question)
    one = choose_weights(evidence(easy + [GEN_FIXES]))
    assert one["weights"]["w_gen"] == one["weights"]["w_gen_head"] == 0
    assert one["report"]["gen_gain"] == 1 and not one["report"]["gen_accepted"]
    # four more, but all at even positions: the odd half gains nothing
    even_only = easy + [GEN_FIXES, SIM_RIGHT] * 4
    choice = choose_weights(evidence(even_only))
    assert choice["report"]["gen_gain"] == 4 and choice["report"]["gen_half_gains"] == [4, 0]
    assert choice["weights"]["w_gen"] == 0 and not choice["report"]["gen_accepted"]
    # six fixed and five broken: +1 over 11 discordant questions
    mixed = easy + [GEN_FIXES, GEN_FIXES, GEN_HURTS, GEN_HURTS] * 2 + [GEN_FIXES, GEN_FIXES, GEN_HURTS]
    choice = choose_weights(evidence(mixed))
    assert choice["weights"]["w_gen"] == 0 and not choice["report"]["gen_accepted"]


def test_gen_is_weighted_when_it_wins_clearly_on_both_halves():
    kinds = [SIM_RIGHT] * 40 + [GEN_FIXES] * 6
    choice = choose_weights(evidence(kinds))
    assert choice["report"]["gen_accepted"] and choice["report"]["gen_half_gains"] == [3, 3]
    # the smallest GEN weight that fixes them all (w_gen 1 beats SIM's 0.5 * 0.4)
    assert (choice["weights"]["w_gen"], choice["weights"]["w_gen_head"]) == (1.0, 0.0)
    assert choice["report"]["right"] == 46
    # without GEN allowed, the same evidence keeps it off
    assert choose_weights(evidence(kinds), use_gen=False)["weights"]["w_gen"] == 0


def test_pipeline_weights_are_the_simplest_within_one_standard_error():
    # the lexical rule fixes one question: not worth a term
    choice = choose_weights(evidence([SIM_RIGHT] * 40 + [LEX_FIXES]), use_gen=False)
    assert choice["weights"]["w_lex"] == 0 and choice["weights"]["w_ner"] == 0 and choice["weights"]["w_len"] == 0
    assert choice["report"]["pipeline_best_right"] == 41 and choice["report"]["pipeline_chosen_right"] == 40
    # ten: it is
    choice = choose_weights(evidence([SIM_RIGHT] * 40 + [LEX_FIXES] * 10), use_gen=False)
    assert choice["weights"]["w_lex"] > 0 and choice["report"]["right"] == 50


def test_the_choice_does_not_move_with_float_noise():
    rng = np.random.default_rng(0)
    kinds = [SIM_RIGHT] * 40 + [GEN_FIXES] * 10 + [LEX_FIXES] * 3 + [GEN_HURTS] * 2
    base = choose_weights(evidence(kinds))["weights"]
    assert base["w_gen"] > 0 and base["w_lex"] > 0
    for _ in range(5):
        ev = evidence(kinds)
        ev.features = ev.features + rng.normal(0, 1e-6, ev.features.shape)  # another thread count's sums
        assert choose_weights(ev)["weights"] == base


def test_a_significant_but_tiny_gen_gain_is_not_worth_serving():
    # +6 of 1,206 (0.5% would be 6.03): beyond two standard errors (2 x sqrt 6) and on both halves
    kinds = [SIM_RIGHT] * 1200 + [GEN_FIXES] * 6
    choice = choose_weights(evidence(kinds))
    assert choice["report"]["gen_gain"] == 6 and choice["report"]["gen_half_gains"] == [3, 3]
    assert not choice["report"]["gen_accepted"] and choice["weights"]["w_gen"] == 0
    assert choose_weights(evidence(kinds), min_gain=0.0)["report"]["gen_accepted"]
    assert choose_weights(evidence([SIM_RIGHT] * 1100 + [GEN_FIXES] * 6))["report"]["gen_accepted"]  # 6 >= 5.53


def test_a_subset_of_the_evidence_is_renumbered_into_halves():
    kinds = [SIM_RIGHT, GEN_FIXES, LEX_FIXES, GEN_HURTS, SIM_RIGHT, GEN_FIXES]
    ev = evidence(kinds)
    part = ev.subset(np.asarray([False, True, False, True, True, True]))
    assert part.n_questions == 4 and list(part.question) == [0, 1, 2, 3]
    assert part.features.tolist() == [row for i in (1, 3, 4, 5) for row in kinds[i]]
    assert list(part.starts) == [0, 2, 4, 6] and part.gold.tolist() == [True, False] * 4
