"""`wenzhi pretrain prepare|run|probe|convert`.

`prepare` and `probe` live in model/prepare.py and model/probe.py, `run` in model/trainer.py,
`convert` (Hugging Face BERT/ERNIE folders in and out) in model/convert.py;
each module offers `add_arguments(parser)` and `main(args) -> int`, and imports torch and
transformers inside its functions, so building the parser stays cheap.
"""
from __future__ import annotations

import argparse
import importlib

_COMMANDS = {
    "prepare": ("wenzhi.model.prepare", "tokenise, mask and pack corpora into on-disk shards"),
    "run": ("wenzhi.model.trainer", "pretrain an encoder from a config file"),
    "probe": ("wenzhi.model.probe", "knowledge cloze probe of a checkpoint"),
    "convert": ("wenzhi.model.convert", "import a Hugging Face BERT/ERNIE folder exactly, or export as BertForMaskedLM"),
}


def _handler(module_name: str):
    def handle(args: argparse.Namespace) -> int:
        return importlib.import_module(module_name).main(args)

    return handle


def register(sub: "argparse._SubParsersAction") -> None:
    pretrain = sub.add_parser("pretrain", help="prepare data, pretrain and probe the encoder")
    commands = pretrain.add_subparsers(dest="pretrain_command", required=True, metavar="STEP")
    for name, (module_name, help_text) in _COMMANDS.items():
        parser = commands.add_parser(name, help=help_text)
        importlib.import_module(module_name).add_arguments(parser)
        parser.set_defaults(handler=_handler(module_name))
