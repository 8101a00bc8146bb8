"""Training FLOPs of a wenzhi step and model FLOPs utilisation (MFU).

Counts matrix multiplies only (2 FLOPs per multiply-add, backward = 2x forward), as PaLM's MFU does,
with attention over the full padded row (that is what SDPA computes) and the vocabulary projection
only where the heads project (masked positions, LM targets).
"""
from __future__ import annotations

# Dense bf16 peak FLOP/s (no sparsity) by device name fragment, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX A6000": 155e12,
    "V100": 125e12,
}


def peak_flops_for(device_name: str) -> float | None:
    for fragment, peak in PEAK_BF16_FLOPS.items():  # ordered: specific names before generic ones
        if fragment.lower() in device_name.lower():
            return peak
    return None


def layer_forward_flops(config, token_slots: int, seq_len: int) -> float:
    H, I = config.hidden_size, config.intermediate_size
    dense = 2 * token_slots * (4 * H * H + 2 * H * I)
    attention = 2 * 2 * token_slots * seq_len * H  # QK^T and AV
    return dense + attention


def head_forward_flops(config, predicted_tokens: int) -> float:
    H, V = config.hidden_size, config.vocab_size
    return 2 * predicted_tokens * (H * H + H * V)


def training_step_flops(config, token_slots: int, seq_len: int, masked_tokens: int,
                        lm_token_slots: int = 0, lm_targets: int = 0) -> float:
    """FLOPs of forward + backward of one pretraining micro-batch."""
    layer = layer_forward_flops(config, token_slots, seq_len)
    forward = (config.num_universal_layers + config.num_nlu_layers) * layer + head_forward_flops(config, masked_tokens)
    if lm_token_slots:
        lm_layer = layer_forward_flops(config, lm_token_slots, seq_len)
        forward += (config.num_universal_layers + config.num_nlg_layers) * lm_layer
        forward += head_forward_flops(config, lm_targets)
    return 3 * forward
