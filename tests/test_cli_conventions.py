"""The `wenzhi` command keeps one convention (wenzhi/cli_conventions.py): every help shows its
defaults, one spelling per concept, old spellings work and warn, `--set` keys are checked."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from wenzhi.cli import build_parser, main
from wenzhi.cli_conventions import KB, OUTPUT, RENAMED_COMMANDS, RENAMED_FLAGS
from wenzhi.cli_conventions import replace_renamed_commands as replace_renamed

REPO = Path(__file__).resolve().parents[1]

# Spellings of a concept that has one (RENAMED_FLAGS: the ones wenzhi had), allowed only as a
# deprecated alias of the flag that replaced them.
FORBIDDEN = {**RENAMED_FLAGS, "--outdir": OUTPUT, "--out-dir": OUTPUT, "--output-file": OUTPUT,
             "--output-path": OUTPUT, "--store": KB, "--kb-path": KB, "--db-path": KB, "--database": KB,
             "--holdout": "--nlpcc-holdout", "--max-seq-len": "--max-length", "--max-seq-length": "--max-length"}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for every command under `wenzhi`, leaves and groups."""
    yield path, parser
    for action in parser._actions:  # argparse has no public walk of its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))
LEAVES = [(path, p) for path, p in COMMANDS if p.get_default("handler") is not None]


def test_the_tree_is_walked():
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"kg import", "index bm25", "pretrain run", "pretrain prepare", "pretrain probe"} <= names
    assert len(LEAVES) >= 15


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda p: " ".join(p) or "wenzhi")
def test_help_exits_0_and_shows_every_default(path, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # without the wrapping (which may split a default)
    parser = dict(COMMANDS)[path]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"wenzhi {' '.join(path)} {name}: no help"
        default = getattr(action, "field_default", action.default)  # a config field's: its dataclass's
        if default not in (None, False, [], argparse.SUPPRESS) and not action.required and action.nargs != 0:
            assert f"(default:{default})".replace(" ", "") in text, f"wenzhi {' '.join(path)} {name}: default not shown"


def test_one_spelling_per_concept():
    """No command spells a concept the way another used to, except as a deprecated alias."""
    offenders = []
    for path, parser in COMMANDS:
        for action in parser._actions:
            deprecated = set(getattr(action, "old_spellings", ()))
            for spelling in action.option_strings:
                if spelling in FORBIDDEN and spelling not in deprecated:
                    offenders.append(f"wenzhi {' '.join(path)} {spelling} (use {FORBIDDEN[spelling]})")
    assert not offenders, offenders


def _deprecated_spellings():
    for path, parser in LEAVES:
        for action in parser._actions:
            for old in getattr(action, "old_spellings", ()):
                yield path, action, old


def test_old_spellings_parse_as_the_new_flag_and_warn(capsys):
    seen = set()
    for path, action, old in _deprecated_spellings():
        parser = build_parser()
        required = [a for a in dict(_commands(parser))[path]._actions
                    if a.required and a.option_strings and a.dest != action.dest]
        argv = [*path, old, "1"]
        for other in required:  # fill the other required flags with any value (only parsed here)
            argv += [other.option_strings[0], *([other.choices[0] if other.choices else "x2"] if other.nargs != 0 else [])]
        positionals = [a for a in dict(_commands(parser))[path]._actions if not a.option_strings
                       and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        argv += [a.choices[0] if a.choices else "x3" for a in positionals]
        args = parser.parse_args(argv)
        assert getattr(args, action.dest) == (action.type or str)("1"), (path, old)
        err = capsys.readouterr().err
        assert f"DeprecationWarning: {old} is deprecated" in err and f"use {action.option_strings[0]}" in err
        seen.add(old)
    assert seen >= set(RENAMED_FLAGS)


def test_an_old_spelling_still_works_end_to_end(data_dir, tmp_path, capsys):
    """`kg import --db` (the old spelling) on real KB lines makes the same store `--kb` does."""
    lines = (data_dir / "kb" / "knowledge.txt").read_text(encoding="utf-8").splitlines()[:300]
    src = tmp_path / "kb300.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["kg", "import", str(src), "--db", str(tmp_path / "old.sqlite"), "--no-progress"]) == 0
    assert "DeprecationWarning: --db is deprecated" in capsys.readouterr().err
    assert main(["kg", "import", str(src), "--kb", str(tmp_path / "new.sqlite"), "--no-progress"]) == 0
    assert "DeprecationWarning" not in capsys.readouterr().err
    from wenzhi.kg import TripleStore

    old, new = TripleStore(tmp_path / "old.sqlite").stats(), TripleStore(tmp_path / "new.sqlite").stats()
    assert old["triples"] == new["triples"] > 0


@pytest.mark.parametrize("argv, unknown, valid", [
    (["pretrain", "run", "--config", "tiny", "--set", "stepz=3"], "'stepz' in the config", "steps"),
    (["pretrain", "run", "--config", "tiny", "--set", "model.hidden_sz=32"], "'hidden_sz' in model", "hidden_size"),
    (["pretrain", "prepare", "--config", "prepare_tiny", "--set", "corpora.0.limt=5"], "'limt' in corpora.0", "limit"),
    (["pretrain", "prepare", "--config", "prepare_tiny", "--set", "seq_length=64"], "'seq_length' in the config", "seq_len"),
    (["pretrain", "prepare", "--config", "prepare_tiny", "--set", "augment.max_token=64"], "'max_token' in augment",
     "max_tokens"),
    (["finetune", "sim", "--kb", "kb.sqlite", "--output", "qa", "--set", "learning_rate=1e-3"],
     "'learning_rate' in the config", "lr"),
])
def test_set_with_an_unknown_key_fails_naming_the_valid_ones(argv, unknown, valid, capsys):
    assert main(argv) == 2
    out = capsys.readouterr()
    message = out.out + out.err
    assert f"unknown key {unknown}" in message and re.search(rf"valid: .*\b{valid}\b", message), message


def test_set_reaches_nested_fields():
    from wenzhi.model.prepare_config import load_config as load_prepare
    from wenzhi.model.trainer import load_config as load_train

    from wenzhi.model.config_files import apply_overrides
    from wenzhi.model.trainer import TrainConfig

    cfg = load_train("tiny", ["steps=7", "model.num_nlu_layers=2", "batch_size=3"])
    assert (cfg.phases[0].steps, cfg.phases[0].batch_size, cfg.model["num_nlu_layers"]) == (7, 3, 2)
    raw = {"output_dir": "o", "phases": [{"shards": "a", "steps": 1}, {"shards": "b", "steps": 2}]}
    assert apply_overrides(raw, ["phases.1.steps=5"], TrainConfig)["phases"][1] == {"shards": "b", "steps": 5}
    with pytest.raises(ValueError, match="phases has 2 items; no item '2'"):
        apply_overrides(raw, ["phases.2.steps=5"], TrainConfig)
    with pytest.raises(ValueError, match="unknown key 'step' in phases.0; valid: batch_size, "):
        apply_overrides(raw, ["phases.0.step=5"], TrainConfig)
    cfg = load_prepare("prepare_tiny", ["corpora.1.limit=11", "strategies.word=0.5", 'output="no"'])
    assert cfg.corpora[1].limit == 11 and cfg.strategies["word"] == 0.5 and cfg.output == "no"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_train("tiny", ["steps"])


def test_finetune_config_fields_come_from_the_dataclass_then_file_then_set_then_flags(tmp_path):
    from dataclasses import fields

    from wenzhi.qa_service.cli import finetune_config
    from wenzhi.qa_service.finetune import FinetuneConfig

    base = ["finetune", "sim", "--kb", "kb.sqlite", "--output", "qa"]
    plain = finetune_config(build_parser().parse_args(base))
    for f in fields(FinetuneConfig):
        if f.name not in ("task", "out", "kb", "questions"):
            assert getattr(plain, f.name) == f.default, f.name  # no second list of defaults
    assert (plain.task, plain.out, plain.kb) == ("sim", Path("qa"), Path("kb.sqlite"))
    config = tmp_path / "ft.yaml"
    config.write_text("lr: 0.003\nnegatives: 7\nepochs: 2\n", encoding="utf-8")
    cfg = finetune_config(build_parser().parse_args(
        [*base, "--config", str(config), "--set", "negatives=9", "--set", "seed=3", "--seed", "4", "--unfreeze"]))
    assert (cfg.lr, cfg.negatives, cfg.epochs, cfg.seed, cfg.freeze_universal) == (0.003, 9, 2, 4, False)
    config.write_text("lr: 0.003\nlearning_rate: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]; valid: .*\blr\b"):
        finetune_config(build_parser().parse_args([*base, "--config", str(config)]))


def test_renamed_commands_are_listed_and_dispatch(capsys):
    parser = build_parser()
    names = {" ".join(path) for path, _ in _commands(parser)}
    for old, new in RENAMED_COMMANDS.items():
        assert " ".join(new) in names and " ".join(old) not in names
    from wenzhi.cli_conventions import replace_renamed_commands
    from wenzhi.qa_service.cli import FUSION_LIMIT, FUSION_SKIP

    argv = replace_renamed_commands(["--data-dir", "d", "finetune", "fusion", "--kb", "k", "--out", "qa", "--no-gen"])
    assert argv == ["--data-dir", "d", "fit-fusion", "--kb", "k", "--out", "qa", "--no-gen"]
    args = parser.parse_args(argv)
    assert (args.model, args.kb, args.no_gen, args.limit, args.skip) == ("qa", "k", True, FUSION_LIMIT, FUSION_SKIP)
    err = capsys.readouterr().err
    assert "`wenzhi finetune fusion` is deprecated" in err and "use `wenzhi fit-fusion`" in err
    assert "--out is deprecated" in err and "use --model" in err


@pytest.mark.parametrize("name", ["Makefile", "README.md"])
def test_makefile_and_readme_use_only_the_new_spellings(name):
    text = (REPO / name).read_text(encoding="utf-8")
    if name == "README.md":  # its conventions paragraph names the old spellings as deprecated; nothing else may
        paragraph = re.search(r"\nCLI conventions .*?\n\n", text, re.S)
        assert paragraph and "wenzhi/cli_conventions.py" in paragraph.group(0)
        text = text.replace(paragraph.group(0), "\n")
    for old in set(RENAMED_FLAGS) | {old for _, _, old in _deprecated_spellings()}:  # --index: evaluate's
        assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", text), f"{name} uses {old}"
    for old in RENAMED_COMMANDS:
        assert " ".join(old) not in text, f"{name} uses `{' '.join(old)}`"


def test_every_wenzhi_command_of_the_makefile_parses_without_a_warning(capsys):
    """`make demo`'s command lines, parsed (not run): the flags exist and none is deprecated."""
    import shlex

    text = (REPO / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.split(" | ")[0] for line in text.splitlines() if "$(WENZHI)" in line]
    assert len(lines) >= 10
    for line in lines:
        line = re.sub(r"\$\(abspath ([^)]*)\)", r"\1", line)
        argv = shlex.split(re.sub(r"\$\(\w+\)", "x", line.split("$(WENZHI)", 1)[1]))
        build_parser().parse_args(replace_renamed(argv))
        assert "DeprecationWarning" not in capsys.readouterr().err, line
