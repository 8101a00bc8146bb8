"""A table of `wenzhi evaluate` results (JSON lines, one per mode and distractor setting), as `make demo`
ends with it.

    python -m wenzhi.qa_service.eval_summary runs/demo/eval-dev.jsonl [more.jsonl ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def summary_rows(path: Path) -> list[str]:
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            cfg = r["config"]
            rows.append(f"{Path(cfg['questions']).name:<16} {cfg['mode']:<9} {cfg['distractor_relations']:>3} "
                        f"{r['n']:>6} {r['score']:>8.3f} {r['em_o']:>8.3f} {r['breakdown']['entity_right']:>7.4f} "
                        f"{r['breakdown']['relation_right']:>7.4f} {r['seconds']['per_question_ms']:>7.1f}")
            sel = r.get("relation_selection")
            if sel:
                for kind in ("all", "own"):
                    s = sel[kind]
                    rows.append(f"{'':<16} relation selection ({kind}, n={s['n']}, {s['mean_candidates']} candidates): "
                                f"SIM {s['accuracy_at_1_sim']:.4f}, lexical {s['accuracy_at_1_lexical']:.4f}, "
                                f"rarest {s['accuracy_at_1_rarest']:.4f}")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: not a `wenzhi evaluate` result ({exc})") from exc
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    print(f"{'questions':<16} {'mode':<9} {'K':>3} {'n':>6} {'Score':>8} {'EM_O':>8} {'S ok':>7} {'P ok':>7} {'ms/q':>7}")
    try:
        for path in args.files:
            for row in summary_rows(path):
                print(row)
    except (OSError, ValueError) as exc:
        print(f"eval_summary: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
