"""The `wenzhi` command's conventions, written down once; every package's `cli` builds with them.

    concept                      spelling                  old spellings (work for one release, warn)
    what a command writes        --output PATH             --out, --output-dir
      (a file or a folder: the flag's help says which)
    the QA model folder read     --model DIR               --out (fit-fusion, which writes into it)
    the KB store (SQLite)        --kb DB                   --db
    NLPCC questions held out     --nlpcc-holdout FRACTION  --holdout-nlpcc
    tokens per sequence          --max-length N            --max-len
    a BM25 index (tantivy folder --search DIR_OR_URL       --index (evaluate, serve, index bm25-search);
      or cluster URL)                                      --url/--index-name/--flavor (retrieval/cli.py)
    a command's config           --config NAME|FILE  plus  --set a.b=value (repeatable: a dotted key
                                 reaches a nested field, the value is read as YAML; keys are checked
                                 against the config's dataclass, an unknown one is an error naming
                                 the valid ones)

Every flag has a help line and every help shows its default (`HelpFormatter`). A config's fields
and their defaults live in its dataclass only: a flag that sets a config field (`add_field`) has
no default of its own and shows the dataclass's; it wins over `--set`, which wins over the file.

This module imports nothing of wenzhi's, so every layer (kg, the lowest, included) can use it.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence

OUTPUT, KB, NLPCC_HOLDOUT, CONFIG, SET = "--output", "--kb", "--nlpcc-holdout", "--config", "--set"

# Old spelling -> the one that replaced it everywhere (but `fit-fusion --out`, now --model, see
# above); tests/test_cli_conventions.py fails on any flag of any command spelled like a key here,
# unless it is registered as deprecated (`add_option(old=...)`). `--index` is not here: `index
# search --index` is a faiss index.
RENAMED_FLAGS = {"--out": OUTPUT, "--output-dir": OUTPUT, "--db": KB, "--holdout-nlpcc": NLPCC_HOLDOUT,
                 "--max-len": "--max-length"}

# Old command words -> the command that replaced them (checked right after the global options).
RENAMED_COMMANDS = {("finetune", "fusion"): ("fit-fusion",)}


def warn_deprecated(old: str, new: str) -> None:
    print(f"wenzhi: DeprecationWarning: {old} is deprecated and goes in the next release; use {new}",
          file=sys.stderr)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each help line ends with its default where there is one to show (not for a switch, a
    required option, None or an empty list: such a flag's help says what its absence means). A
    deprecated spelling is left out of the option list and named at the end of the help."""

    def _get_help_string(self, action):
        text = action.help or ""
        old = getattr(action, "old_spellings", ())
        if old:
            text += f" ({', '.join(old)}: deprecated spelling)"
        if action.default in (None, False, [], argparse.SUPPRESS) or action.required or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"

    def _format_action_invocation(self, action):
        old = getattr(action, "old_spellings", ())
        if not old:
            return super()._format_action_invocation(action)
        shown = [s for s in action.option_strings if s not in old]
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{s} {metavar}" if action.nargs != 0 else s for s in shown)


class _StoreAcceptingOldSpellings(argparse.Action):
    """argparse's store action, which warns when the value came in under an old spelling."""

    def __init__(self, option_strings, dest, old_spellings=(), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.old_spellings = tuple(old_spellings)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old_spellings:
            warn_deprecated(option_string, self.option_strings[0])
        setattr(namespace, self.dest, values)


def add_option(parser: argparse.ArgumentParser, name: str, *, old: Sequence[str] = (), **kwargs) -> argparse.Action:
    """`parser.add_argument(name, ...)` that also accepts the old spellings `old` (hidden from the
    help, a warning on stderr naming `name`). One action, so `required=` covers every spelling."""
    if not old:
        return parser.add_argument(name, **kwargs)
    return parser.add_argument(name, *old, dest=kwargs.pop("dest", name.lstrip("-").replace("-", "_")),
                               action=_StoreAcceptingOldSpellings, old_spellings=old, **kwargs)


def add_output(parser, what: str, *, old: Sequence[str] = (), required: bool = True, **kwargs) -> argparse.Action:
    """`--output PATH`; `what` says what is written there (a file or a folder, and how)."""
    return add_option(parser, OUTPUT, old=old, required=required, metavar=kwargs.pop("metavar", "PATH"),
                      help=what, **kwargs)


def add_kb(parser, *, required: bool = True, help: str = "the KB store (from `wenzhi kg import`)",
           old: Sequence[str] = (), **kwargs) -> argparse.Action:
    return add_option(parser, KB, old=old, required=required, metavar="DB", help=help, **kwargs)


def add_nlpcc_holdout(parser, *, help: str, old: Sequence[str] = (), **kwargs) -> argparse.Action:
    return add_option(parser, NLPCC_HOLDOUT, old=old, type=float, metavar="FRACTION", help=help, **kwargs)


def add_config(parser, what: str, example: str, *, required: bool = True, metavar: str = "NAME|FILE") -> None:
    """`--config NAME|FILE` and `--set a.b=value` (model/config_files.py reads and checks both)."""
    parser.add_argument(CONFIG, required=required, metavar=metavar, help=what)
    parser.add_argument(SET, action="append", default=[], metavar="KEY=VALUE", dest="set",
                        help=f"override a config field, e.g. {example}; a dotted key reaches a nested field, "
                             "the value is read as YAML; repeatable")


def dataclass_defaults(schema: type) -> dict:
    """Each field's default (None where it has none): what a command's help shows."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        else:
            out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    return out


def add_field(parser, flag: str, defaults: Mapping[str, object], field: str | None = None, *,
              old: Sequence[str] = (), **kwargs) -> argparse.Action:
    """A flag that sets the config field `field` (by default the flag's name, `--max-steps` ->
    max_steps). It has no default of its own: absent, the config file's value or `--set`'s holds,
    else the dataclass's, which the help shows (`defaults`: `dataclass_defaults(Config)`)."""
    field = field or flag.lstrip("-").replace("-", "_")
    default = defaults[field]
    text = kwargs.pop("help")
    if default is not None and kwargs.get("action") not in ("store_const", "store_true", "store_false"):
        text += f" (default: {str(default).replace('%', '%%')})"
    action = add_option(parser, flag, old=old, dest=field, default=argparse.SUPPRESS, help=text, **kwargs)
    action.field_default = default
    return action


def given_fields(args: argparse.Namespace, schema: type) -> dict:
    """The config fields set by flags on this command line (`add_field` leaves absent ones out)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(schema) if hasattr(args, f.name)}


class ArgumentParser(argparse.ArgumentParser):
    """The `wenzhi` parser: `HelpFormatter` by default. Sub-parsers are made of the parent's class,
    so every command under `wenzhi` gets it without asking."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def replace_renamed_commands(argv: list[str], global_options_with_values: Sequence[str] = ("--data-dir",)) -> list[str]:
    """argv with an old command (`finetune fusion`) replaced by its new one, after a warning."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in global_options_with_values else 1
    for old, new in RENAMED_COMMANDS.items():
        if tuple(argv[i:i + len(old)]) == old:
            warn_deprecated(f"`wenzhi {' '.join(old)}`", f"`wenzhi {' '.join(new)}`")
            return [*argv[:i], *new, *argv[i + len(old):]]
    return argv
