"""The `wenzhi` command: one entry point, one sub-command group per package.

Each package exposes `register(subparsers)` in its `cli` module and imports its heavy
dependencies (torch, faiss, tantivy) inside the handlers, so `wenzhi kg ...` starts fast. Flag
names, config overrides, help defaults and deprecated spellings follow wenzhi/cli_conventions.py.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from wenzhi.cli_conventions import ArgumentParser
    from wenzhi.kg import cli as kg_cli
    from wenzhi.model import cli as model_cli
    from wenzhi.qa_service import cli as qa_cli
    from wenzhi.retrieval import cli as retrieval_cli

    parser = ArgumentParser(prog="wenzhi", description="文知: knowledge-enhanced pretraining and KBQA "
                            "(conventions: wenzhi/cli_conventions.py)")
    parser.add_argument(
        "--data-dir",
        help="directory holding the shared data (default: $WENZHI_DATA or ../shared/data)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (kg_cli, retrieval_cli, model_cli, qa_cli):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from wenzhi.cli_conventions import replace_renamed_commands

    parser = build_parser()
    args = parser.parse_args(replace_renamed_commands(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.data_dir:
        # One setting for every layer: the library reads WENZHI_DATA, the flag overrides it.
        os.environ["WENZHI_DATA"] = args.data_dir
    from wenzhi.kg.datadir import DataMissingError

    try:
        return int(args.handler(args) or 0)
    except DataMissingError as exc:
        print(f"wenzhi: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wenzhi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
