"""A generator must read its source: a tiny prefix-LM learns to copy random token strings in a bounded
number of steps, and one that cannot see its source stays at chance. This is the test that would have
caught the demo's GEN head answering every question with the same few KB pairs (issue 12)."""
import torch

VOCAB, FIRST, LENGTH = 64, 5, 5  # ids 0-4: pad, [CLS], [SEP], spare; strings of 5 tokens from 59


def _copy_model(copy_source: bool):
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPrefixLM

    torch.manual_seed(0)
    config = WenzhiConfig(vocab_size=VOCAB, hidden_size=32, num_universal_layers=1, num_nlu_layers=1,
                          num_nlg_layers=1, num_attention_heads=2, intermediate_size=64, pad_token_id=0,
                          cls_token_id=1, sep_token_id=2, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, copy_source=copy_source)
    return WenzhiForPrefixLM(config)


def _batch(gen: torch.Generator, n: int, blind: bool = False):
    """Rows `[CLS] s [SEP] s [SEP]`; `blind` replaces the source by padding-free noise unrelated to
    the target (a generator that cannot read its source)."""
    strings = torch.randint(FIRST, VOCAB, (n, LENGTH), generator=gen)
    source = torch.randint(FIRST, VOCAB, (n, LENGTH), generator=gen) if blind else strings
    cls, sep = torch.full((n, 1), 1), torch.full((n, 1), 2)
    ids = torch.cat([cls, source, sep, strings, sep], 1)
    labels = torch.full_like(ids, -100)
    labels[:, LENGTH + 2 :] = ids[:, LENGTH + 2 :]
    return ids, labels, torch.full((n,), LENGTH + 2)


def _train_and_copy(copy_source: bool, steps: int, blind: bool = False) -> float:
    model = _copy_model(copy_source)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        ids, labels, prefix = _batch(gen, 32, blind)
        loss = model(ids, prefix, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids, _, prefix = _batch(torch.Generator().manual_seed(99), 64)  # unseen strings, real sources
    out = model.generate(ids[:, : LENGTH + 2], max_new_tokens=LENGTH + 1, num_beams=1)
    produced = out.sequences[:, 0, :LENGTH]
    return (produced == ids[:, LENGTH + 2 : 2 * LENGTH + 2]).all(1).float().mean().item()


def test_a_copying_generator_learns_to_copy_unseen_strings():
    torch.set_num_threads(1)
    assert _train_and_copy(copy_source=True, steps=150) >= 0.9


def test_a_generator_that_cannot_see_its_source_stays_at_chance():
    torch.set_num_threads(1)
    # the same training with the source replaced by noise: 59^5 possible strings, nothing to learn
    assert _train_and_copy(copy_source=True, steps=150, blind=True) < 0.05
