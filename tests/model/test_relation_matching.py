"""The relation-matching (SIM) head trains reproducibly on more than one CPU thread."""
from __future__ import annotations

import torch

from wenzhi.model.modeling import WenzhiConfig
from wenzhi.model.relation_matching import WenzhiForRelationMatching


def test_the_gradient_is_the_same_every_time_on_two_threads():
    # Many questions share candidate relations (as every SIM batch does): the gradient of the shared
    # relation states adds up the contributions of repeated indices, in a fixed order only if the
    # selection is index_select (advanced indexing's backward differed run to run on 2 threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        config = WenzhiConfig(vocab_size=200, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                              num_universal_layers=1, num_nlu_layers=1, num_nlg_layers=0,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = WenzhiForRelationMatching(config).train()
        g = torch.Generator().manual_seed(1)
        questions = torch.randint(5, 200, (32, 24), generator=g)
        relations = torch.randint(5, 200, (300, 12), generator=g)
        candidates = torch.randint(0, 300, (32, 46), generator=g)
        labels = torch.randint(0, 46, (32,), generator=g)
        grads = []
        for _ in range(6):
            model.zero_grad(set_to_none=True)
            model(questions, relation_input_ids=relations, candidates=candidates, labels=labels).loss.backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
