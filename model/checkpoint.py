"""Training checkpoints that are atomic, verified before use, and never run code when loaded; and
the model folders handed to users (`save_model_folder`: weights, modeling code, tokenizer).

A checkpoint is a folder `step-NNNNNNNN/` under `<output_dir>/checkpoints/`, written as
`.tmp-step-NNNNNNNN/` and renamed once complete, so a kill at any moment leaves the previous one
intact. Inside:
  - what `accelerator.save_state` writes for the model and optimizer (safetensors for the model;
    under FSDP a gathered full state dict, under DeepSpeed its own `pytorch_model/` folder);
  - `trainer_state.json`: the optimizer step (hence the data position), tokens seen and the
    learning-rate schedule's state, as JSON (no pickle, unlike accelerate's `custom_checkpoint_*.pkl`);
  - `rng_state_<rank>.safetensors`: each rank's torch (and CUDA) generator state, as tensors;
  - `COMPLETE`: JSON naming every file with its size, written last.

Resuming walks the complete checkpoints newest first and takes the first that passes
`verify_checkpoint` (every listed file there at its recorded size, no file that the trainer did
not write, DeepSpeed's pickles loadable with `weights_only=True` and only DeepSpeed's own state
classes allowed) and then loads; a corrupt or tampered one is reported and skipped. Accelerate
loads the optimizer with `torch.load(weights_only=True)`; DeepSpeed loads its files with
`weights_only=False`, which is why they are checked with the restricted unpickler first.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

STATE_FILE = "trainer_state.json"
MANIFEST = "COMPLETE"


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, corrupt or holds something the trainer did not write."""


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, newest first."""
    if not ckpt_root.exists():
        return []
    return sorted((p for p in ckpt_root.glob("step-*") if (p / MANIFEST).exists()), reverse=True)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def save_checkpoint(accelerator, ckpt_root: Path, step: int, keep: int, state: dict) -> Path:
    """Every rank calls this; the main process creates, completes, renames and prunes."""
    from safetensors.torch import save_file

    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    save_file(rng_state(), str(tmp / f"rng_state_{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        manifest = {"step": step, "time": time.time(), "processes": accelerator.num_processes, "files": _files(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(ckpt_root)[keep:] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify_checkpoint(path: Path) -> dict:
    """The checkpoint's manifest, after checking the folder against it; raises CheckpointError."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        listed = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({exc})") from None
    found = _files(path)
    found.pop(MANIFEST, None)
    for name, size in listed.items():
        if name not in found:
            raise CheckpointError(f"{path}: {name} is missing")
        if found[name] != size:
            raise CheckpointError(f"{path}: {name} is {found[name]} bytes, {size} when it was written (truncated or replaced)")
    extra = sorted(set(found) - set(listed))
    if extra:
        raise CheckpointError(f"{path}: holds files the trainer did not write: {extra}")
    for name in listed:
        if name.startswith("pytorch_model") and name.endswith(".pt"):  # DeepSpeed's own pickles
            _check_restricted_unpickle(path / name)
    return manifest


def _check_restricted_unpickle(file: Path) -> None:
    """DeepSpeed later loads these with weights_only=False; they must load with the restricted
    unpickler first, allowing only the plain state classes DeepSpeed itself stores."""
    import torch

    allowed = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed = [LossScaler, ZeroStageEnum, fragment_address]
    except ImportError:
        pass
    try:
        with torch.serialization.safe_globals(allowed):
            torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), ...
        raise CheckpointError(f"{file}: refused by the restricted unpickler ({str(exc).splitlines()[-1][:300]})") from None


def rng_state() -> dict:
    import torch

    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def load_checkpoint(accelerator, path: Path) -> dict:
    """Load model, optimizer and this rank's generator state; returns trainer_state.json."""
    import torch
    from safetensors.torch import load_file

    verify_checkpoint(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    accelerator.load_state(str(path))
    rng_file = path / f"rng_state_{accelerator.process_index}.safetensors"
    if not rng_file.exists():
        raise CheckpointError(f"{path}: no generator state for rank {accelerator.process_index} "
                              "(written with a different number of processes?)")
    rng = load_file(str(rng_file))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    return state


def resume_newest_intact(accelerator, ckpt_root: Path, warn) -> tuple[Path | None, dict | None, list[str]]:
    """Load the newest checkpoint that verifies and loads; `warn(message)` for each one skipped.
    Returns (path, trainer state, skipped reasons); (None, None, reasons) when none is usable."""
    skipped = []
    for path in complete_checkpoints(ckpt_root):
        try:
            return path, load_checkpoint(accelerator, path), skipped
        except Exception as exc:  # a corrupt or tampered checkpoint: say why, try the one before
            reason = f"skipping checkpoint {path.name}: {exc}"
            skipped.append(reason)
            warn(reason)
    return None, None, skipped


def save_model_folder(model, target: Path, tokenizer, state_dict: dict | None = None, extra=None) -> Path:
    """A model folder as users receive one: `save_pretrained` (weights, config.json with its
    `auto_map`, the modeling code) plus the tokenizer it was trained with, written beside `target`
    and swapped into place, so an interrupted save leaves the previous folder intact.
    `extra(folder)` writes whatever else belongs in it (a fine-tune's report) before the swap."""
    from wenzhi.model.tokenizer import save_tokenizer
    from wenzhi.retrieval.atomic import atomic_directory

    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        save_tokenizer(tokenizer, tmp, model.config.max_position_embeddings)
        if extra is not None:
            extra(tmp)
    return Path(target)
