"""torch.compile as the trainer applies it: what eager computes, without a new graph for every masked count."""
from __future__ import annotations

import pytest
import torch

from wenzhi.model.compiling import compile_for_training
from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches (and its counters) emptied before and after."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_model() -> WenzhiForPretraining:
    torch.manual_seed(0)
    config = WenzhiConfig(vocab_size=300, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                          num_universal_layers=1, num_nlu_layers=1, num_nlg_layers=1,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return WenzhiForPretraining(config).train()


def packed_batch(seed: int, mask_rate: float) -> dict:
    """Four rows of three packed documents, MLM labels at `mask_rate`, kinds, and the NLG loss."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (4, 48), generator=g)
    masked = torch.rand(4, 48, generator=g) < mask_rate
    return dict(input_ids=torch.where(masked, 3, ids), labels=torch.where(masked, ids, -100),
                document_ids=(torch.arange(48) * 3 // 48).expand(4, 48).contiguous(),
                kind=torch.tensor([0, 1, 2, 1]), lm_prefix_lengths=torch.tensor([3, 4, 5, 6]))


@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo + AOT autograd: seconds
    pytest.param("inductor", marks=pytest.mark.slow),  # the generated kernels too: minutes on 2 CPUs
])
def test_compiled_training_step_computes_what_eager_does(backend, fresh_dynamo, one_thread):
    from torch._dynamo.utils import counters

    model = tiny_model()
    compiled = compile_for_training(model, backend=backend)
    graphs = []
    for seed, rate in ((1, 0.15), (2, 0.3), (3, 0.0), (4, 0.2), (5, 0.25)):  # five masked counts, one of them none
        batch = packed_batch(seed, rate)
        results = []
        for run in (model, compiled):
            model.zero_grad(set_to_none=True)
            out = run(**batch)
            out.loss.backward()
            results.append((out.loss.detach(), out.mlm_loss.detach(), out.kind_count,
                            [p.grad.clone() for p in model.parameters()]))
        (eager, eager_mlm, eager_kinds, eager_grads), (comp, comp_mlm, comp_kinds, comp_grads) = results
        assert torch.allclose(eager, comp, atol=1e-5) and torch.allclose(eager_mlm, comp_mlm, atol=1e-5)
        assert torch.equal(eager_kinds, comp_kinds)
        assert max(float((a - b).abs().max()) for a, b in zip(eager_grads, comp_grads)) < 1e-5
        if rate == 0.0:
            assert float(comp_mlm) == 0.0 and int(comp_kinds.sum()) == 0
        graphs.append(counters["stats"]["unique_graphs"])
    # the heads' graphs are compiled again until dynamo marks the masked count dynamic, then serve
    # every count (a graph per count would compile for most steps of a real run)
    assert graphs[2] == graphs[3] == graphs[4], graphs
