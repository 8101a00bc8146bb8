"""GPU pretraining check: bf16 tokens/s and MFU, wenzhi against Hugging Face BertForMaskedLM, plus faiss-gpu.

    python bench/gpu_pretrain.py                  # one H100/H200, at most --budget-s (480 s)
    python bench/gpu_pretrain.py --compile        # the same with torch.compile on both models
    python bench/gpu_pretrain.py --dry-run        # CPU: tiny sizes, 2 steps, the same code path (a test runs it)
    python bench/gpu_pretrain.py --compile --sizes bert-large --seqs 512   # one row: both systems at that size
    python bench/gpu_pretrain.py --profile ...    # also where each step's device time goes, by kernel
    python bench/gpu_pretrain.py --compile --systems wenzhi --attention-backend cudnn   # one variant
    python bench/gpu_pretrain.py --compile --architecture bert ...   # wenzhi as it runs an imported BERT
    python bench/gpu_pretrain.py --compile --bf16-residual ...       # wenzhi's residual stream in bf16

Needs torch and transformers, not an installed wenzhi: on a bare GPU image the checkout's folders are
imported as pyproject.toml's package-dir maps them (see import_wenzhi).

Models: BERT-base (hidden 768, 12 layers, 12 heads, FFN 3072) and BERT-large (1024, 24, 16, 4096),
vocabulary 21128 (BERT Chinese), at sequence 128 and 512, dropout 0.1 (--dropout). wenzhi =
WenzhiForPretraining with universal + NLU layers = BERT's layers (no NLG branch: BERT has none),
its masked-only MLM head, in one of its two block families (--architecture): `pre-ln-rotary`, the
default for models trained from scratch, or `bert`, post-LN with learned absolute positions, which
is BERT's own math and what a user's imported BERT/ERNIE checkpoint continues pretraining with;
measured on full rows of one document each (SDPA without a mask) and on packed rows of 4
documents (block-diagonal mask, what pretraining on packed shards runs). Hugging Face =
BertForMaskedLM(attn_implementation="sdpa") on full rows (no padding: its best case).
Both: bf16 autocast over fp32 weights (what accelerate's mixed_precision="bf16" does), fused
AdamW (--bf16-residual: wenzhi's residual stream in bf16 under that autocast, config.residual_in_fp32
False; weights, gradients and AdamW stay fp32), 15% of positions masked, token ids drawn uniformly
(speed does not depend on the text).
A step is forward + backward + optimizer step; tokens/s = real tokens / wall s after warm-up.

MFU = model FLOPs per step / step time / peak, with peak = dense bf16 (989 TFLOP/s on H100 SXM
and H200; --peak-tflops to override) and model FLOPs as model/flops.py counts them (printed):
matmuls only, 2 per multiply-add, backward = 2 x forward, attention over the full row, and the
vocabulary projection over the masked positions only, for both systems: the task is the same,
so HF's projection of every position is counted as its overhead, not as useful work.

faiss: GpuIndexFlatIP and GpuIndexIVFFlat (nlist 4096, nprobe 32) over 1M random unit vectors
of d=768: build (add; IVF: train on 100k + add), batch search of 10k queries for the top 10,
IVF recall@10 against Flat. Skipped with a message where faiss has no GPU support.

The last line printed is a JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def import_wenzhi() -> None:
    """Use the installed wenzhi; without one, make `wenzhi.<sub>` resolve to the checkout's top-level
    folders (what pyproject.toml's package-dir does) so a GPU image with torch and transformers runs
    this file as it is. wenzhi/__init__ (Auto-class registration) is not needed here."""
    import importlib.util
    import types

    if importlib.util.find_spec("wenzhi") is not None and importlib.util.find_spec("wenzhi.model") is not None:
        return
    root = Path(__file__).resolve().parents[1]
    package = types.ModuleType("wenzhi")
    package.__path__ = [str(root / "wenzhi"), str(root)]
    sys.modules["wenzhi"] = package


SIZES = {
    "bert-base": dict(hidden=768, layers=12, heads=12, intermediate=3072),
    "bert-large": dict(hidden=1024, layers=24, heads=16, intermediate=4096),
}
TOKENS_PER_STEP = 65536  # rows per step = TOKENS_PER_STEP / seq_len: 512 at 128, 128 at 512
DRY = dict(sizes={"tiny-a": dict(hidden=64, layers=2, heads=4, intermediate=128),
                  "tiny-b": dict(hidden=96, layers=2, heads=4, intermediate=192)},
           seqs=[32, 64], tokens_per_step=256, warmup=1, steps=2, faiss_n=20000, faiss_d=64, faiss_q=200)
VOCAB = 21128
FLOPS_FORMULA = ("per layer forward = 2*T*(4*H^2 + 2*H*I) + 2*2*T*S*H (QK^T, AV); head forward = 2*P*(H^2 + H*V); "
                 "step = 3 * (L * layer + head); T = tokens in the step, S = sequence length, P = masked positions "
                 "(15%), H hidden, I FFN, V vocabulary, L layers")


# --attention-backend: which kernel F.scaled_dot_product_attention may use (PyTorch picks among those
# allowed). On the H200 with torch 2.11 PyTorch's own choice for unmasked rows was already cuDNN's fused
# attention (bench/RESULTS.md, seventh session); the option is there to compare kernels.
SDPA_BACKENDS = {"default": None, "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def sdpa_backend(name: str):
    """A context that allows only that kernel (tracing under it bakes the choice into a compiled graph)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if SDPA_BACKENDS[name] is None:
        return contextlib.nullcontext()
    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def make_batch(rows: int, seq: int, docs_per_row: int, device, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (rows, seq), generator=g)
    masked = torch.rand(rows, seq, generator=g) < 0.15
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    input_ids = torch.where(masked, torch.full_like(ids, 103), ids)
    doc = (torch.arange(seq) * docs_per_row // seq).expand(rows, seq).contiguous()
    return {k: v.to(device) for k, v in dict(input_ids=input_ids, labels=labels, document_ids=doc).items()}


# --architecture: wenzhi's two block families (model/configuration.py)
ARCHITECTURES = {"pre-ln-rotary": dict(norm_placement="pre", position_embedding_type="rotary"),
                 "bert": dict(norm_placement="post", position_embedding_type="absolute", max_position_embeddings=512)}


def build(system: str, size: dict, dropout: float = 0.1, architecture: str = "pre-ln-rotary",
          attention_dropout: float | None = None, bf16_residual: bool = False):
    """`dropout` for hidden states and, unless `attention_dropout` is given, attention probabilities."""
    from transformers import BertConfig, BertForMaskedLM

    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining

    common = dict(hidden_dropout_prob=dropout,
                  attention_probs_dropout_prob=dropout if attention_dropout is None else attention_dropout,
                  intermediate_size=size["intermediate"])
    if system == "hf":
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], max_position_embeddings=512, **common)
        model = BertForMaskedLM._from_config(cfg, attn_implementation="sdpa")
        assert model.config._attn_implementation == "sdpa"
        return model
    universal = size["layers"] // 2
    return WenzhiForPretraining(WenzhiConfig(vocab_size=VOCAB, hidden_size=size["hidden"], num_attention_heads=size["heads"],
                                             num_universal_layers=universal, num_nlu_layers=size["layers"] - universal,
                                             num_nlg_layers=0, residual_in_fp32=not bf16_residual,
                                             **ARCHITECTURES[architecture], **common))


def step_flops(size: dict, tokens: int, seq: int, masked: int) -> float:
    from types import SimpleNamespace

    from wenzhi.model.flops import training_step_flops

    cfg = SimpleNamespace(hidden_size=size["hidden"], intermediate_size=size["intermediate"], vocab_size=VOCAB,
                          num_universal_layers=size["layers"] // 2, num_nlu_layers=size["layers"] - size["layers"] // 2,
                          num_nlg_layers=0)
    return training_step_flops(cfg, tokens, seq, masked)


# Where a step's device time goes, by kernel name: matmuls, attention, the optimizer, and the rest
# (normalisation, activations, dropout, casts, copies: what fusion can shrink). CPU names are aten's.
# Checked in this order (fmha_cutlass* is attention, not a matmul).
KERNEL_KINDS = (("attention", ("flash", "fmha", "attention", "sdpa", "aten::_scaled_dot")),
                ("matmul", ("gemm", "nvjet", "sm90_xmma", "cutlass", "cublas", "aten::mm", "aten::addmm", "aten::bmm")),
                ("optimizer", ("adam", "multi_tensor")))


# The "other" kind by what its kernels do, read from the op names inductor gives a fused kernel
# (triton_poi_fused_gelu_gelu_backward_...) or aten's: where fusion or a kernel of our own could save.
OTHER_FAMILIES = (("gelu", ("gelu",)), ("layernorm/dropout/residual", ("layer_norm", "dropout")),
                  ("loss", ("log_softmax", "nll_loss", "cross_entropy")), ("embedding", ("embedding",)),
                  ("rotary", ("neg", "addcmul", "cos", "sin")), ("reduction (bias grads)", ("sum",)),
                  ("cast/copy", ("copy", "clone", "cat", "permute")))


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in lowered for p in parts)), "other")


def other_family(name: str) -> str:
    lowered = name.lower()
    return next((family for family, parts in OTHER_FAMILIES if any(p in lowered for p in parts)), "rest")


def profile_steps(one, batches, device, steps: int = 3, top: int = 25) -> dict:
    """torch.profiler over `steps` more steps: device time per kernel kind, the "other" kind's ms by
    family, and the top kernels by their own time (CPU ops on a dry run)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            one(batches[i % 2])
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        own_us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if own_us > 0 and (not cuda or event.device_type == torch.autograd.DeviceType.CUDA):
            rows.append((event.key, own_us / steps / 1e3))
    total = sum(ms for _, ms in rows) or 1.0
    kinds: dict[str, float] = {}
    families: dict[str, float] = {}
    for name, ms in rows:
        kind = kernel_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + ms
        if kind == "other":
            family = other_family(name)
            families[family] = families.get(family, 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    return {"ms_per_step": round(total, 2), "share_by_kind": {k: round(v / total, 3) for k, v in sorted(kinds.items())},
            "other_ms_by_family": {k: round(v, 2) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
            "top": [{"name": name[:90], "ms_per_step": round(ms, 3), "share": round(ms / total, 3)} for name, ms in rows[:top]]}


def measure(system: str, size: dict, seq: int, docs: int, device, tokens_per_step: int, warmup: int, steps: int,
            compile_: bool, peak: float | None, profile: bool = False, compile_mode: str | None = None,
            dropout: float = 0.1, architecture: str = "pre-ln-rotary", attention_dropout: float | None = None,
            bf16_residual: bool = False) -> dict:
    import torch
    from torch._dynamo.utils import counters

    from wenzhi.model.compiling import compile_for_training

    torch.manual_seed(0)
    model = build(system, size, dropout, architecture, attention_dropout, bf16_residual).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    rows = max(1, tokens_per_step // seq)
    batches = [make_batch(rows, seq, docs, device, seed) for seed in range(2)]
    forward = compile_for_training(model, mode=compile_mode) if compile_ else model  # as the trainer compiles
    graphs_before = counters["stats"]["unique_graphs"]

    def one(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if system == "hf":
                out = forward(input_ids=batch["input_ids"], labels=batch["labels"])
            else:
                out = forward(input_ids=batch["input_ids"], labels=batch["labels"], document_ids=batch["document_ids"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for i in range(warmup):
        one(batches[i % 2])
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        one(batches[i % 2])
    sync()
    secs = (time.perf_counter() - t0) / steps
    masked = int((batches[0]["labels"] != -100).sum())
    flops = step_flops(size, rows * seq, seq, masked)
    blocks = "post-LN absolute" if system == "hf" else f"{model.config.norm_placement}-LN {model.config.position_embedding_type}"
    residual = "bf16" if system != "hf" and not model.config.residual_in_fp32 else "fp32"
    result = {"system": system, "blocks": blocks, "residual": residual, "seq_len": seq, "docs_per_row": docs if system != "hf" else 1, "rows": rows,
              "step_s": round(secs, 5), "tokens_per_s": round(rows * seq / secs, 1),
              "model_tflops_per_step": round(flops / 1e12, 4), "achieved_tflops": round(flops / secs / 1e12, 2),
              "mfu": round(flops / secs / peak, 4) if peak else None, "warmup_s": round(warm_s, 2),
              "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
              "compiled_graphs": counters["stats"]["unique_graphs"] - graphs_before if compile_ else None}
    if profile:
        try:  # (written and tested on CPU only: a profiler failure must not cost the measured figures)
            result["profile"] = profile_steps(one, batches, device, steps=3 if device.type == "cuda" else 1)
        except Exception as exc:  # noqa: BLE001
            result["profile_error"] = f"{type(exc).__name__}: {exc}"
    return result  # the models go with this frame; main() empties the CUDA cache between runs


def faiss_check(n: int, d: int, queries: int, gpu: bool) -> dict:
    """Flat and IVF-Flat build + search; on GPU through faiss's Gpu indexes, else the CPU ones."""
    import numpy as np

    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss is not installed"}
    if gpu and not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        return {"skipped": "faiss has no GPU support here (pip install 'wenzhi[gpu]' after uninstalling faiss-cpu)"}
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, d), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = base[rng.choice(n, queries, replace=False)] + 0.05 * rng.standard_normal((queries, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    nlist = min(4096, max(16, n // 256))
    out = {"n": n, "d": d, "queries": queries, "device": "gpu" if gpu else "cpu", "nlist": nlist, "nprobe": 32}
    res = faiss.StandardGpuResources() if gpu else None
    t = time.perf_counter()
    flat = faiss.GpuIndexFlatIP(res, d) if gpu else faiss.IndexFlatIP(d)
    flat.add(base)
    out["flat_build_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    _, truth = flat.search(q, 10)
    out["flat_search_s"] = round(time.perf_counter() - t, 4)
    out["flat_qps"] = round(queries / max(out["flat_search_s"], 1e-9), 1)
    t = time.perf_counter()
    if gpu:
        ivf = faiss.GpuIndexIVFFlat(res, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(base[: min(n, 100_000)])
    ivf.add(base)
    out["ivf_build_s"] = round(time.perf_counter() - t, 3)
    ivf.nprobe = 32
    t = time.perf_counter()
    _, got = ivf.search(q, 10)
    out["ivf_search_s"] = round(time.perf_counter() - t, 4)
    out["ivf_qps"] = round(queries / max(out["ivf_search_s"], 1e-9), 1)
    out["ivf_recall_at_10"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 2 steps: the same code path")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=480, help="start no new measurement after this")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak (default: looked up from the device name)")
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), help="measure these sizes only (default: all)")
    parser.add_argument("--seqs", nargs="+", type=int, choices=[128, 512], help="these sequence lengths only")
    parser.add_argument("--profile", action="store_true",
                        help="after each measurement, profile 3 more steps: device time by kernel kind, top kernels")
    parser.add_argument("--systems", nargs="+", choices=["wenzhi", "wenzhi-packed", "hf"],
                        help="measure these only (default: all three; wenzhi-packed = 4 documents per row)")
    parser.add_argument("--attention-backend", choices=sorted(SDPA_BACKENDS), default="default",
                        help="restrict F.scaled_dot_product_attention to one kernel (default: PyTorch's choice)")
    parser.add_argument("--compile-mode", choices=["default", "max-autotune-no-cudagraphs"], default="default",
                        help="torch.compile mode (max-autotune: GEMM autotuning, minutes of warm-up)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="hidden and attention dropout of both models (BERT's and ERNIE's 0.1 by default)")
    parser.add_argument("--attention-dropout", type=float,
                        help="attention dropout alone (default: --dropout); 0 lets attention kernels skip their RNG")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="pre-ln-rotary",
                        help="wenzhi's block family: pre-LN rotary (from scratch) or bert (post-LN, absolute: an import)")
    parser.add_argument("--bf16-residual", action="store_true",
                        help="wenzhi's residual stream in bf16 under autocast (config residual_in_fp32=False)")
    parser.add_argument("--json", help="also write the result object here")
    args = parser.parse_args()

    import torch

    import_wenzhi()
    from wenzhi.model.flops import peak_flops_for

    start = time.perf_counter()
    if args.dry_run:
        device, sizes, seqs = torch.device("cpu"), DRY["sizes"], DRY["seqs"]
        tokens_per_step, warmup, steps = DRY["tokens_per_step"], DRY["warmup"], DRY["steps"]
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --dry-run to check the code path on CPU")
        device = torch.device("cuda")
        sizes = {name: SIZES[name] for name in (args.sizes or SIZES)}
        seqs = args.seqs or [128, 512]
        tokens_per_step, warmup, steps = TOKENS_PER_STEP, args.warmup, args.steps
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops_for(name) if device.type == "cuda" else None)
    print(f"device: {name}; peak dense bf16: {peak / 1e12 if peak else None} TFLOP/s; torch {torch.__version__}")
    print(f"FLOPs: {FLOPS_FORMULA}")
    results, skipped = [], []
    for size_name, size in sizes.items():
        for seq in seqs:
            for system, docs in (("wenzhi", 1), ("wenzhi", 4), ("hf", 1)):
                if args.systems and (system if docs == 1 else "wenzhi-packed") not in args.systems:
                    continue
                label = f"{size_name} seq {seq} {system}" + (f" ({docs} docs/row)" if system == "wenzhi" else "")
                if time.perf_counter() - start > args.budget_s:
                    skipped.append(label)
                    continue
                with sdpa_backend(args.attention_backend):
                    r = measure(system, size, seq, docs, device, tokens_per_step, warmup, steps, args.compile, peak,
                                profile=args.profile,
                                compile_mode=None if args.compile_mode == "default" else args.compile_mode,
                                dropout=args.dropout, architecture=args.architecture,
                                attention_dropout=args.attention_dropout, bf16_residual=args.bf16_residual)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                r["size"] = size_name
                results.append(r)
                mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
                print(f"{label:40s} {r['tokens_per_s']:>12,.0f} tok/s  {r['achieved_tflops']:>7.2f} TFLOP/s  MFU {mfu}",
                      flush=True)
                if "profile" in r:
                    p = r["profile"]
                    print(f"    profiled {p['ms_per_step']} ms/step by kind {p['share_by_kind']}")
                    print(f"    other, ms by family: {p['other_ms_by_family']}")
                    for k in p["top"][:6]:
                        print(f"      {k['share']:6.1%} {k['ms_per_step']:9.3f} ms  {k['name']}")
    ratios = {}
    for r in results:
        if r["system"] == "wenzhi":
            hf = next((h for h in results if h["system"] == "hf" and h["size"] == r["size"] and h["seq_len"] == r["seq_len"]), None)
            if hf:
                ratios[f"{r['size']}/{r['seq_len']}/{r['docs_per_row']}docs"] = round(r["tokens_per_s"] / hf["tokens_per_s"], 3)
    print("wenzhi / HF tokens/s:", ratios)
    faiss_result = None
    if not args.skip_faiss:
        if args.dry_run:
            faiss_result = faiss_check(DRY["faiss_n"], DRY["faiss_d"], DRY["faiss_q"], gpu=False)
        else:
            faiss_result = faiss_check(1_000_000, 768, 10_000, gpu=True)
        print("faiss:", faiss_result)
    summary = {"device": name, "peak_tflops": peak / 1e12 if peak else None, "dry_run": args.dry_run,
               "compile": args.compile, "compile_mode": args.compile_mode,
               "attention_backend": args.attention_backend, "dropout": args.dropout,
               "attention_dropout": args.dropout if args.attention_dropout is None else args.attention_dropout,
               "architecture": args.architecture, "bf16_residual": args.bf16_residual, "steps": steps, "warmup": warmup,
               "flops_formula": FLOPS_FORMULA,
               "results": results, "wenzhi_over_hf": ratios, "skipped_over_budget": skipped, "faiss": faiss_result,
               "wall_s": round(time.perf_counter() - start, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
