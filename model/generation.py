"""Greedy and beam-search decoding for WenzhiForPrefixLM, with a key/value cache and an optional
per-hypothesis constraint (`allowed_tokens_fn`, e.g. a KB prefix trie).

Written here rather than through transformers' GenerationMixin because the model is an encoder with
a prefix-LM mask (bidirectional source, causal target) and positions restarting per document, which the
mixin's decoder-only cache and mask utilities do not model; the search itself is kept textbook.
"""
from __future__ import annotations

import torch

from .modeling import AttentionLayout, GenerationResult


def _left_pad(input_ids, attention_mask, token_type_ids, pad_id):
    """Re-lay sources so that they end at the same column: positions then restart at each row's
    first real token and the next token always follows the last column."""
    B, S = input_ids.shape
    lengths = attention_mask.sum(1)
    order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)  # real tokens first
    ids = torch.gather(input_ids, 1, order)
    types = torch.gather(token_type_ids, 1, order)
    shift = (S - lengths)[:, None]
    col = (torch.arange(S, device=input_ids.device)[None] - shift) % S  # rotate right by S - length
    ids, types = torch.gather(ids, 1, col), torch.gather(types, 1, col)
    valid = torch.arange(S, device=input_ids.device)[None] >= shift
    return torch.where(valid, ids, pad_id), torch.where(valid, types, 0), valid, lengths


def prefix_lm_generate(
    model, input_ids, attention_mask, token_type_ids, max_new_tokens, num_beams,
    num_return_sequences, allowed_tokens_fn, eos_token_id, target_token_type, length_penalty,
    renormalize: bool = False,
) -> GenerationResult:
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")
    was_training = model.training
    model.eval()
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    pad_id = model.config.pad_token_id
    src, types, valid, lengths = _left_pad(input_ids, attention_mask.long(), token_type_ids, pad_id)
    B, S = src.shape
    K = num_beams
    src, types, valid, lengths = (t.repeat_interleave(K, 0) for t in (src, types, valid, lengths))
    base = model.wenzhi
    caches = [dict() for _ in range(len(base.universal_layers) + len(base.nlg_layers))]

    # Step 0: encode the sources (bidirectional among themselves), fill the cache.
    doc = torch.where(valid, 0, -1)
    positions = (torch.arange(S, device=device)[None] - (S - lengths)[:, None]).clamp(min=0)
    mask = (doc[:, :, None] == doc[:, None, :])[:, None]
    layout = AttentionLayout(mask, positions, doc, prefix_lm=True)
    encoded = base.nlg(base.universal(src, types, layout=layout, caches=caches), caches=caches)
    hidden = encoded[:, -1]
    # a copying model points into the source at every step (its beams share their row's source)
    source = model.source_states(encoded, src, torch.full_like(lengths, S), valid) if model.copies else None

    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    beam_tokens: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    key_valid = valid

    for step in range(max_new_tokens):
        logprobs = model.next_token_logprobs(hidden, source).view(B, K, -1)
        if allowed_tokens_fn is not None:
            rows: list[int] = []  # (beam row, token) of every allowed continuation, set in one go
            cols: list[int] = []
            live = beam_scores.tolist()
            for b in range(B):
                for k in range(K):
                    if not done[b] and live[b][k] > float("-inf"):
                        allowed = allowed_tokens_fn(b, list(beam_tokens[b][k]))
                        rows.extend([b * K + k] * len(allowed))
                        cols.extend(allowed)
            allowed_mask = torch.zeros(B * K, logprobs.shape[-1], dtype=torch.bool, device=device)
            allowed_mask[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = True
            logprobs = logprobs.masked_fill(~allowed_mask.view(B, K, -1), float("-inf"))
            if renormalize:  # a distribution over the allowed tokens: a forced token costs nothing
                logprobs = torch.log_softmax(logprobs, dim=-1).nan_to_num(float("-inf"))
        candidates = (beam_scores[:, :, None] + logprobs).view(B, -1)
        top_scores, top_index = candidates.topk(min(2 * K, candidates.shape[1]), dim=1)
        V = logprobs.shape[-1]
        next_scores = torch.full((B, K), float("-inf"), device=device)
        next_tokens = torch.full((B, K), pad_id, dtype=torch.long, device=device)
        next_source = torch.arange(K, device=device).repeat(B, 1)
        new_beam_tokens = [[[] for _ in range(K)] for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            filled = 0
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                if score == float("-inf") or filled == K:
                    break
                k, token = divmod(index, V)
                tokens = beam_tokens[b][k] + [token]
                if token == eos_token_id:
                    finished[b].append((score / len(tokens) ** length_penalty, tokens))
                    continue
                next_scores[b, filled], next_tokens[b, filled], next_source[b, filled] = score, token, k
                new_beam_tokens[b][filled] = tokens
                filled += 1
            best_running = next_scores[b].max().item()
            if filled == 0:
                done[b] = True
            elif len(finished[b]) >= K:
                worst_kept = sorted(s for s, _ in finished[b])[-K]
                # log-probabilities only fall: a running beam cannot beat this bound
                if best_running / (max_new_tokens ** length_penalty if length_penalty > 0 else 1) < worst_kept:
                    done[b] = True
        beam_scores, beam_tokens = next_scores, new_beam_tokens
        if all(done) or step == max_new_tokens - 1:
            break
        # Reorder caches to the surviving beams, then run the chosen tokens one step.
        flat_source = (next_source + torch.arange(B, device=device)[:, None] * K).view(-1)
        for cache in caches:
            cache["k"], cache["v"] = cache["k"][flat_source], cache["v"][flat_source]
        key_valid = torch.cat([key_valid[flat_source], torch.ones(B * K, 1, dtype=torch.bool, device=device)], 1)
        step_ids = next_tokens.view(-1, 1)
        step_types = torch.full_like(step_ids, target_token_type)
        step_layout = AttentionLayout(
            key_valid[:, None, None, :], (lengths + step)[:, None], torch.zeros_like(step_ids), prefix_lm=True
        )
        hidden = base.nlg(base.universal(step_ids, step_types, layout=step_layout, caches=caches), caches=caches)[:, -1]

    for b in range(B):  # unterminated beams compete with finished ones
        for k in range(K):
            if beam_scores[b, k] > float("-inf") and beam_tokens[b][k]:
                finished[b].append((beam_scores[b, k].item() / len(beam_tokens[b][k]) ** length_penalty, beam_tokens[b][k]))
    R = num_return_sequences
    width = max([len(t) for hyps in finished for _, t in hyps] + [1])
    sequences = torch.full((B, R, width), pad_id, dtype=torch.long, device=device)
    scores = torch.full((B, R), float("-inf"), device=device)
    for b in range(B):
        for r, (score, tokens) in enumerate(sorted(finished[b], key=lambda h: -h[0])[:R]):
            sequences[b, r, : len(tokens)] = torch.tensor(tokens, device=device)
            scores[b, r] = score
    model.train(was_training)
    return GenerationResult(sequences=sequences, scores=scores)
