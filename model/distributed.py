"""How the trainer meets accelerate's launchers: one N-rank job, or a clear refusal.

accelerate can turn a launch into something other than what was asked for without saying so:
torchrun's N CPU processes each become a 1-process run unless accelerate is told it is on CPU;
`accelerate launch --cpu --num_processes N` starts one process; FSDP on CPU becomes DDP; N
DeepSpeed CPU processes each see a world of 1. `make_accelerator` sets accelerate up so the
launches that can work do, and `check_launch` refuses the rest before anything is written.
`fill_deepspeed_config` gives DeepSpeed the batch values it would otherwise read from a
DataLoader, which this trainer does not use.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wenzhi.model.trainer import TrainConfig

class LaunchError(RuntimeError):
    """The processes started are not the job accelerate sees (N copies would share one folder)."""


def _flag(env, name: str) -> bool:
    return str(env.get(name, "")).lower() in ("1", "true", "yes")


def launcher_processes(argv: list[str] | None) -> int | None:
    """The process count that an `accelerate launch` command line asked for, if it is one."""
    if not argv or not any(Path(a).name == "accelerate" or a.endswith("accelerate.commands.launch") for a in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(argv):
                return int(argv[i + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    return None


def _parent_argv() -> list[str] | None:
    try:
        import psutil

        return psutil.Process().parent().cmdline()
    except Exception:  # no parent to read: nothing to check
        return None


def check_launch(num_processes: int, distributed_type: str, env=os.environ, launcher_argv: list[str] | None = None) -> None:
    """Refuse a launch that accelerate would silently run as something else."""
    asked = launcher_processes(launcher_argv)
    if asked and asked != num_processes:
        # `accelerate launch --cpu --num_processes N` (or without --multi_gpu on a CPU machine) starts
        # ONE process unless mpirun is configured, and tells it nothing about N.
        raise LaunchError(
            f"accelerate launch asked for {asked} processes but started {num_processes}: on a machine without "
            f"GPUs it starts one process unless given --multi_gpu (which also runs on CPU, over gloo) or an "
            f"mpirun hostfile. Use `accelerate launch --multi_gpu --num_processes {asked} -m wenzhi pretrain run ...`, "
            f"`accelerate launch --config_file model/configs/accelerate/ddp.yaml ...` or `torchrun --nproc_per_node {asked} -m wenzhi ...`")
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if env.get(var) and int(env[var]) != num_processes:
            raise LaunchError(
                f"launched as {env[var]} processes ({var}) but accelerate sees {num_processes}: each process "
                f"would train its own copy into the same output folder. Launch with `accelerate launch "
                f"[--cpu] --num_processes N -m wenzhi pretrain run ...` or `torchrun --nproc_per_node N -m wenzhi ...`")
    if _flag(env, "ACCELERATE_USE_FSDP") and distributed_type != "FSDP":
        raise LaunchError(f"FSDP was asked for, but accelerate set up {distributed_type} (accelerate runs FSDP on "
                          "GPUs and other accelerators only, and on CPU would silently use DDP instead)")
    if _flag(env, "ACCELERATE_USE_DEEPSPEED") and distributed_type != "DEEPSPEED":
        raise LaunchError(f"DeepSpeed was asked for, but accelerate set up {distributed_type}")


def fill_deepspeed_config(ds_config: dict, cfg: "TrainConfig", num_processes: int) -> dict:
    """Fill a DeepSpeed config's "auto" batch values from the training config (accelerate fills
    them from a DataLoader, which this trainer does not use: its data position is a function of
    the step). DeepSpeed fixes gradient accumulation for the whole run; the micro-batch it is told
    only feeds its own bookkeeping, so phases may differ in batch size but not in accumulation."""
    accums = {p.gradient_accumulation_steps or cfg.gradient_accumulation_steps for p in cfg.phases}
    if len(accums) > 1:
        raise ValueError(f"under DeepSpeed every phase needs the same gradient_accumulation_steps, not {sorted(accums)}")
    accum = accums.pop()
    micro = cfg.phases[0].batch_size
    wanted = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
              "train_batch_size": micro * accum * num_processes, "gradient_clipping": cfg.max_grad_norm or 0.0}
    for key, value in wanted.items():
        if ds_config.get(key, "auto") == "auto":
            ds_config[key] = value
        elif key != "gradient_clipping" and ds_config[key] != value:
            raise ValueError(f"DeepSpeed config {key}={ds_config[key]}, but the training config gives {value} "
                             "(set it to \"auto\" to take the training config's)")
    if "optimizer" in ds_config or "scheduler" in ds_config:
        raise ValueError("the DeepSpeed config must not name an optimizer or scheduler: the training config does")
    return ds_config


def make_accelerator(mixed: str, out: Path, trackers: list[str], find_unused_parameters: bool = False):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    # Without CUDA, accelerate only forms a multi-process CPU (gloo) group when told it is on CPU;
    # otherwise torchrun's N processes each become a 1-process run. DeepSpeed needs cpu=False.
    cpu = not torch.cuda.is_available() and not _flag(os.environ, "ACCELERATE_USE_DEEPSPEED")
    # Parameters that get no gradient on some steps (pretraining without the LM loss: the NLG
    # branch) must be announced to DDP.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, kwargs_handlers=[ddp], log_with=trackers or None,
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")))
    check_launch(accelerator.num_processes, accelerator.distributed_type.name, launcher_argv=_parent_argv())
    return accelerator
