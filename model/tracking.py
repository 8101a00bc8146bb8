"""Training curves: `train_log.jsonl` always, plus the trackers this field uses, through accelerate.

    report_to: tensorboard   # default: event files in <output_dir>/tensorboard, nothing leaves the machine
    report_to: wandb         # offline (files under <output_dir>/wandb) unless WANDB_MODE says otherwise
    report_to: [tensorboard, wandb] | none

Written for any training loop (pretraining today, fine-tuning later): `RunLog(accelerator, folder,
report_to)` before `accelerator.prepare`-time logging starts, `start(config)`, `log(record)` for
every record (a JSON line; numeric fields also go to the trackers as scalars, nested dicts
flattened as `kind_loss/text`), `finish()`. Only the main process writes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

TRACKERS = ("tensorboard", "wandb")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}


def parse_report_to(value) -> list[str]:
    """'tensorboard' | 'wandb' | 'none' | a list of them -> the tracker names."""
    names = [value] if isinstance(value, str) or value is None else list(value)
    names = [str(n).strip().lower() for n in names if n is not None]
    if not names or names == ["none"]:
        return []
    bad = sorted(set(names) - set(TRACKERS))
    if bad or "none" in names:
        raise ValueError(f"report_to: {bad or names} not understood; use tensorboard, wandb, none or a list")
    return list(dict.fromkeys(names))


def available_trackers(names: list[str], warn=print) -> list[str]:
    """The requested trackers whose package is installed; the others are named once, with the fix."""
    import importlib.util

    found = []
    for name in names:
        if importlib.util.find_spec(_PACKAGE[name]) is None:
            warn(f"warning: report_to {name}: the {_PACKAGE[name]} package is not installed "
                 f"(pip install 'wenzhi[tracking]'); curves go to train_log.jsonl only")
        else:
            found.append(name)
    return found


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a log record, nested keys joined with '/' (booleans and strings left out)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def flat_config(config: dict) -> dict:
    """Hyper-parameters as the trackers accept them (TensorBoard's hparams: scalars and strings)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix[:-1]] = value
        elif value is not None:
            out[prefix[:-1]] = json.dumps(value, ensure_ascii=False)

    walk("", config)
    return out


class RunLog:
    def __init__(self, accelerator, folder: Path, trackers: list[str], project: str = "wenzhi"):
        self.accelerator = accelerator
        self.folder = Path(folder)
        self.path = self.folder / "train_log.jsonl"
        self.trackers = trackers
        self.project = project

    def start(self, config: dict, step_key: str = "step") -> None:
        self.step_key = step_key
        if not self.trackers:
            return
        init_kwargs = {}
        if "wandb" in self.trackers:
            # Nothing is sent anywhere unless the user asked: offline unless WANDB_MODE is set.
            init_kwargs["wandb"] = {"mode": os.environ.get("WANDB_MODE", "offline"), "dir": str(self.folder)}
        self.accelerator.init_trackers(self.project, config=flat_config(config), init_kwargs=init_kwargs)

    def log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.trackers and self.step_key in record and "event" not in record:
            values = scalars({k: v for k, v in record.items() if k != self.step_key})
            self.accelerator.log(values, step=int(record[self.step_key]))

    def finish(self) -> None:
        if self.trackers:
            self.accelerator.end_training()
