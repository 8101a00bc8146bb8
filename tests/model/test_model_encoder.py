"""The encoder's invariants on a tiny model the test builds: packing isolation, masks, heads, I/O."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

from wenzhi.model.modeling import (
    WenzhiConfig,
    WenzhiForPrefixLM,
    WenzhiForPretraining,
    WenzhiForSequencePairClassification,
    WenzhiForTokenClassification,
    WenzhiModel,
)

VOCAB = 300


def tiny_config(**kw) -> WenzhiConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                num_universal_layers=2, num_nlu_layers=1, num_nlg_layers=1,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return WenzhiConfig(**base)


# The two block families: from scratch (pre-LN, rotary) and imported BERT/ERNIE (post-LN, absolute).
FAMILIES = [pytest.param({}, id="pre-rotary"),
            pytest.param({"norm_placement": "post", "position_embedding_type": "absolute", "use_task_id": True},
                         id="post-absolute")]


def tokens(*shape, seed=0):
    return torch.randint(110, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_never_attend_across_boundaries(family):
    torch.manual_seed(0)
    model = WenzhiModel(tiny_config(**family)).eval()
    doc1, doc2, doc3 = tokens(9, seed=1), tokens(12, seed=2), tokens(7, seed=3)
    row = torch.cat([doc1, doc2, doc3, torch.zeros(4, dtype=torch.long)])[None]
    doc_ids = torch.tensor([[0] * 9 + [1] * 12 + [2] * 7 + [-1] * 4])
    changed = row.clone()
    changed[0, 9:21] = tokens(12, seed=99)
    for branch in ("nlu", "nlg"):
        a = model(row, document_ids=doc_ids, branch=branch).last_hidden_state
        b = model(changed, document_ids=doc_ids, branch=branch).last_hidden_state
        assert torch.equal(a[0, :9], b[0, :9]) and torch.equal(a[0, 21:28], b[0, 21:28])
        assert not torch.allclose(a[0, 9:21], b[0, 9:21])
        # positions restart per document: document 3 packed at offset 21 == document 3 alone
        alone = model(doc3[None], branch=branch).last_hidden_state
        torch.testing.assert_close(a[0, 21:28], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_lm_mask_bidirectional_source_causal_target(family):
    torch.manual_seed(0)
    model = WenzhiModel(tiny_config(**family)).eval()
    ids = tokens(1, 12)
    prefix = torch.tensor([5])
    base = model(ids, branch="nlg", prefix_lengths=prefix).last_hidden_state
    later_target = ids.clone()
    later_target[0, 9] = (later_target[0, 9] + 1) % VOCAB
    out = model(later_target, branch="nlg", prefix_lengths=prefix).last_hidden_state
    assert torch.equal(base[0, :9], out[0, :9])  # nothing before position 9 sees it
    assert not torch.allclose(base[0, 9:], out[0, 9:])
    last_source = ids.clone()
    last_source[0, 4] = (last_source[0, 4] + 1) % VOCAB
    out = model(last_source, branch="nlg", prefix_lengths=prefix).last_hidden_state
    assert not torch.allclose(base[0, 0], out[0, 0])  # the first source token sees the last one
    assert not torch.allclose(base[0, 11], out[0, 11])
    try:
        model.nlg(model.universal(ids))
    except ValueError as exc:
        assert "prefix-LM" in str(exc)
    else:
        raise AssertionError("NLG over a bidirectional universal pass must be refused")


def test_masked_only_head_equals_full_vocabulary_loss():
    torch.manual_seed(0)
    model = WenzhiForPretraining(tiny_config()).eval()
    ids = tokens(3, 20)
    labels = torch.full_like(ids, -100)
    picks = torch.rand(ids.shape, generator=torch.Generator().manual_seed(4)) < 0.2
    labels[picks] = tokens(int(picks.sum()), seed=5)
    doc = torch.tensor([[0] * 10 + [1] * 10, [0] * 20, [0] * 15 + [-1] * 5])
    labels[doc < 0] = -100
    kind = torch.tensor([0, 1, 1])
    out = model(ids, labels=labels, document_ids=doc, kind=kind)
    hidden = model.wenzhi.nlu(model.wenzhi.universal(ids, document_ids=doc))
    full_logits = model.mlm_head(hidden, model.wenzhi.embeddings.word.weight)  # [B, L, V]
    full_loss = F.cross_entropy(full_logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.mlm_loss, full_loss)
    assert out.mlm_logits.shape == (int((labels != -100).sum()), VOCAB)
    token_loss = F.cross_entropy(full_logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, reduction="none")
    kind_tokens = kind[:, None].expand_as(labels).reshape(-1)
    for k in (0, 1):
        sel = (labels.reshape(-1) != -100) & (kind_tokens == k)
        torch.testing.assert_close(out.kind_loss_sum[k], token_loss[sel].sum())
        assert out.kind_count[k] == sel.sum()


def test_pretraining_lm_loss_uses_nlg_branch_and_backpropagates():
    torch.manual_seed(0)
    model = WenzhiForPretraining(tiny_config())
    ids = tokens(2, 16)
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    out = model(ids, labels=labels, lm_prefix_lengths=torch.tensor([4, 6]))
    assert out.lm_loss is not None and out.loss > out.mlm_loss
    out.loss.backward()
    assert model.wenzhi.nlg_layers[0].ffn.up.weight.grad.abs().sum() > 0
    assert model.lm_head.dense.weight.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = WenzhiForPretraining(tiny_config()).eval()
    ids = tokens(2, 10)
    labels = torch.where(torch.arange(10) % 3 == 0, ids, -100)
    before = model(ids, labels=labels, lm_prefix_lengths=torch.tensor([3, 4]))
    model.save_pretrained(tmp_path / "m")
    loaded = WenzhiForPretraining.from_pretrained(tmp_path / "m").eval()
    after = loaded(ids, labels=labels, lm_prefix_lengths=torch.tensor([3, 4]))
    assert torch.equal(before.mlm_logits, after.mlm_logits) and torch.equal(before.loss, after.loss)
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == "wenzhi"
    encoder = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert isinstance(encoder, WenzhiModel)
    assert torch.equal(encoder(ids).last_hidden_state, model.wenzhi(ids).last_hidden_state)
    # a generation head picks up the pretrained NLG branch and LM head by name
    gen = WenzhiForPrefixLM.from_pretrained(tmp_path / "m")
    assert torch.equal(gen.lm_head.dense.weight, model.lm_head.dense.weight)


def test_freeze_universal_trains_only_task_modules():
    torch.manual_seed(0)
    model = WenzhiForTokenClassification(tiny_config(num_labels=3))
    model.freeze_universal()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "universal_layers" in n or "embeddings" in n}
    task = {n: p.detach().clone() for n, p in model.named_parameters() if "nlu_layers" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = tokens(2, 10)
    out = model(ids, labels=torch.randint(0, 3, (2, 10)))
    out.loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), n
        if n in task:
            assert not torch.equal(p, task[n]), n


def test_one_universal_pass_feeds_several_heads():
    torch.manual_seed(0)
    ner = WenzhiForTokenClassification(tiny_config(num_labels=3)).eval()
    sim = WenzhiForSequencePairClassification(tiny_config(num_labels=1)).eval()
    sim.wenzhi.embeddings.load_state_dict(ner.wenzhi.embeddings.state_dict())
    sim.wenzhi.universal_layers.load_state_dict(ner.wenzhi.universal_layers.state_dict())
    ids = tokens(2, 10)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    shared = ner.universal(ids, attention_mask=mask)
    torch.testing.assert_close(ner.from_universal(shared).logits, ner(ids, attention_mask=mask).logits)
    torch.testing.assert_close(sim.from_universal(shared).logits, sim(ids, attention_mask=mask).logits)
    loss = sim(ids, attention_mask=mask, labels=torch.tensor([1.0, 0.0])).loss
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_greedy_with_cache_matches_full_recompute(family):
    torch.manual_seed(0)
    model = WenzhiForPrefixLM(tiny_config(**family)).eval()
    src = torch.tensor([[101, 120, 121, 122, 102], [101, 130, 131, 102, 0]])
    result = model.generate(src, (src != 0).long(), max_new_tokens=6, eos_token_id=299)
    for b in range(2):
        seq = src[b][src[b] != 0].tolist()
        for _ in range(6):
            logits = model(torch.tensor([seq]), prefix_lengths=torch.tensor([int((src[b] != 0).sum())])).logits
            seq.append(int(logits[0, -1].argmax()))
        assert result.sequences[b, 0].tolist() == seq[-6:]


def test_constrained_generation_respects_allowed_tokens():
    torch.manual_seed(0)
    model = WenzhiForPrefixLM(tiny_config()).eval()
    src = torch.tensor([[101, 120, 121, 122, 102], [101, 130, 131, 102, 0]])
    # a toy trie: two "KB answers" per row, then [SEP]
    answers = {0: [[140, 141, 142], [140, 150]], 1: [[160, 161], [170, 171, 172]]}
    seen = []

    def allowed(batch_idx, prefix_ids):
        seen.append((batch_idx, tuple(prefix_ids)))
        options = {a[len(prefix_ids)] if len(prefix_ids) < len(a) else 102
                   for a in answers[batch_idx] if a[: len(prefix_ids)] == prefix_ids[: len(a)]}
        return sorted(options)

    for beams in (1, 3):
        result = model.generate(src, (src != 0).long(), max_new_tokens=6, num_beams=beams,
                                num_return_sequences=min(beams, 2), allowed_tokens_fn=allowed)
        for b in range(2):
            for r in range(result.sequences.shape[1]):
                seq = [t for t in result.sequences[b, r].tolist() if t != 0]
                if beams > 1 or r == 0:
                    assert seq[-1] == 102 and seq[:-1] in answers[b], (beams, b, seq)
        if beams == 3:  # both answers of each row come back, best first
            assert result.scores[:, 0].ge(result.scores[:, 1]).all()
            for b in range(2):
                got = sorted([t for t in result.sequences[b, r].tolist() if t not in (0, 102)] for r in range(2))
                assert got == sorted(answers[b])
    assert (0, (140,)) in seen and (1, ()) in seen


def test_rotary_gradient_is_the_rotation_turned_back():
    """apply_rotary's written-out backward (one rotation by -angle) equals the formula's gradient."""
    from wenzhi.model.modeling import apply_rotary, rotary_tables

    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2], [5, 6, 7, 8, 9, 10, 11]])
    cos, sin = rotary_tables(positions, 8, 10000.0, torch.float64)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, cos, sin), (x,))
    half = 4
    formula = x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin
    upstream = torch.randn_like(x)
    expected, = torch.autograd.grad(formula, x, upstream)
    got, = torch.autograd.grad(apply_rotary(x, cos, sin), x, upstream)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bf16_residual_stream_under_autocast_only(family):
    """residual_in_fp32=False: under bf16 autocast every block reads and writes a bf16 stream (the
    default keeps fp32) and the loss and gradients stay those of the fp32 stream within bf16's
    rounding; without autocast the option changes nothing, bit for bit."""
    torch.manual_seed(0)
    fp32_stream = WenzhiForPretraining(tiny_config(**family))
    bf16_stream = WenzhiForPretraining(tiny_config(**family, residual_in_fp32=False))
    bf16_stream.load_state_dict(fp32_stream.state_dict())
    # CUDA's autocast runs LayerNorm in fp32 (fp32 out), the CPU's in its input's dtype: as on CUDA
    for model in (fp32_stream, bf16_stream):
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.forward = lambda x, m=m: F.layer_norm(x.float(), m.normalized_shape, m.weight, m.bias, m.eps)
    ids = tokens(2, 24)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3, ids, -100)
    doc = torch.tensor([[0] * 12 + [1] * 12, [0] * 24])

    def run(model, autocast: bool):
        seen = []
        hooks = [b.register_forward_hook(lambda _m, inp, out: seen.append((inp[0].dtype, out.dtype)))
                 for b in list(model.wenzhi.universal_layers) + list(model.wenzhi.nlu_layers)]
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(ids, labels=labels, document_ids=doc).loss
        loss.backward()
        for h in hooks:
            h.remove()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.detach(), grads, seen

    plain_loss, plain_grads, _ = run(fp32_stream, autocast=False)
    same_loss, same_grads, _ = run(bf16_stream, autocast=False)
    assert torch.equal(plain_loss, same_loss) and torch.equal(plain_grads, same_grads)

    ref_loss, ref_grads, ref_seen = run(fp32_stream, autocast=True)
    loss, grads, seen = run(bf16_stream, autocast=True)
    assert set(ref_seen) == {(torch.float32, torch.float32)}
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}
    assert grads.dtype == torch.float32  # the parameters' gradients stay fp32
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=0)
    assert F.cosine_similarity(grads, ref_grads, dim=0) > 0.99
