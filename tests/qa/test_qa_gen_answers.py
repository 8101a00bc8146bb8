"""GEN alone answers questions it has not seen: a demo-sized generator (the tiny config's shape, from
scratch), with the copy mechanism and the relation-first layout, trained here for 150 steps on KgCLUE
train questions, decodes the gold (head, relation) through the KB trie for most of 40 KgCLUE dev
questions. The demo's GEN head before issue 12 had 0 of 200 (its beams were the same few pairs for
every question); teacher-forced accuracy alone would not have shown that, decoding does."""
import torch

from wenzhi.qa_service.data import gen_features, read_qa

STEPS, BATCH = 150, 32


def test_a_demo_sized_generator_answers_held_out_questions(data_dir, kb_store, tmp_path):
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPrefixLM
    from wenzhi.model.tokenizer import load_tokenizer

    from wenzhi.qa_service.trie import ensure_trie

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = load_tokenizer(None)
    train = read_qa(data_dir / "kgclue" / "train.json", limit=STEPS * BATCH)
    dev = read_qa(data_dir / "kgclue" / "dev.json", limit=40)  # their heads are in the KB slice
    feats = gen_features(tok, train, layout="relation-first")
    prefixes, targets = feats["prefix_ids"], feats["target_ids"]
    config = WenzhiConfig(vocab_size=len(tok), hidden_size=64, num_universal_layers=2, num_nlu_layers=1,
                          num_nlg_layers=1, num_attention_heads=4, intermediate_size=256, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, copy_source=True, target_layout="relation-first")
    model = WenzhiForPrefixLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(STEPS):
        rows = range(step * BATCH, min(len(prefixes), (step + 1) * BATCH))
        width = max(len(prefixes[i]) + len(targets[i]) for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for j, i in enumerate(rows):
            p, t = prefixes[i], targets[i]
            ids[j, : len(p) + len(t)] = torch.as_tensor(p + t)
            labels[j, len(p) : len(p) + len(t)] = torch.as_tensor(t)
        for group in opt.param_groups:  # warm up, then decay linearly
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (1 - step / STEPS)
        loss = model(ids, torch.as_tensor([len(prefixes[i]) for i in rows]), attention_mask=(ids != 0).long(),
                     labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    trie = ensure_trie(tmp_path, kb_store, tok, "relation-first")
    enc = tok([ex.question for ex in dev], padding=True, return_tensors="pt")
    result = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=48, num_beams=3,
                            allowed_tokens_fn=lambda b, prefix: trie.allowed_next(prefix))
    right, pairs = 0, set()
    for ex, seqs in zip(dev, result.sequences.tolist()):
        seq = seqs[0][: seqs[0].index(trie.sep_id) + 1]
        hits = [(kb_store.entity(h.head_id).name, h.relation) for h in trie.lookup(seq)]
        assert hits, "constrained decoding ended off the KB"
        right += (ex.head, ex.relation) in hits
        pairs.update(hits)
    assert len(pairs) >= 30  # not the same few pairs for every question
    assert right / len(dev) >= 0.6, f"GEN alone right on {right} of {len(dev)} held-out questions"
