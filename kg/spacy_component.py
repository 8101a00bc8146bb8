"""spaCy component: entity linking into `doc.ents`, each Span's `kb_id_` the entity's full name.

Use `make_nlp(db_path)` for a ready pipeline (`spacy.blank("zh")` with the jieba segmenter,
fully offline), or `nlp.add_pipe("wenzhi_entity_linker")` and `.set_kb(path)` on your own
(`config={"db": path}` works too, and then pins that path in the pipeline's config).
When an earlier component (a model's NER) already set `doc.ents`, its spans are linked
(the linker's NER-span hook) instead of detecting mentions from the alias index.

Saved pipelines carry their KB: `nlp.to_disk(dir)` copies the triple store into
`dir/wenzhi_entity_linker/kb.sqlite`, as spaCy's own entity linker saves its KB, so the config
holds no path and `spacy.load(dir)` works on another machine. The factory is registered through
the `spacy_factories` entry point (pyproject.toml), so `spacy.load` finds it in a fresh process
without `import wenzhi`.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import filter_spans

from wenzhi.kg.linker import EntityLinker
from wenzhi.kg.store import TripleStore

_LINKERS: dict[str, EntityLinker] = {}  # one linker per store file, shared by pipelines


def _linker_for(db: str) -> EntityLinker:
    if db not in _LINKERS:
        _LINKERS[db] = EntityLinker(TripleStore(db))
    return _LINKERS[db]


class KBEntityLinker:
    KB_FILE = "kb.sqlite"

    def __init__(self, linker: EntityLinker | None, label: str = "KB_ENTITY", min_score: float = 0.0):
        self.linker = linker
        self.label = label
        self.min_score = min_score

    def set_kb(self, db: str | Path) -> None:
        self.linker = _linker_for(str(db))

    def to_disk(self, path, exclude=()) -> None:
        """Copy the triple store beside the pipeline (sqlite's online backup: a consistent copy)."""
        if self.linker is None:
            return
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        target = path / self.KB_FILE
        target.unlink(missing_ok=True)
        with sqlite3.connect(f"file:{self.linker.store.path.resolve()}?mode=ro", uri=True) as src, \
                sqlite3.connect(target) as dst:
            src.backup(dst)

    def from_disk(self, path, exclude=()) -> "KBEntityLinker":
        saved = Path(path) / self.KB_FILE
        if saved.exists():
            self.set_kb(saved)
        return self

    def __call__(self, doc: Doc) -> Doc:
        if self.linker is None:
            raise ValueError("wenzhi_entity_linker has no KB: call nlp.get_pipe('wenzhi_entity_linker').set_kb(path) "
                             'or add it with config={"db": "path/to/kb.sqlite"}')
        existing = list(doc.ents)
        spans = [(s.start_char, s.end_char) for s in existing] if existing else None
        mentions = self.linker.link(doc.text, spans=spans)
        linked = []
        for m in mentions:
            if m.entity is None or m.score < self.min_score:
                continue
            # jieba tokens need not align with a KB name: widen the span to whole tokens.
            span = doc.char_span(m.start, m.end, label=self.label, kb_id=m.entity.name,
                                 alignment_mode="expand")
            if span is not None:
                linked.append(span)
        if existing:
            by_offsets = {(s.start_char, s.end_char): s for s in linked}
            merged = []
            for s in existing:
                hit = next((l for l in linked if l.start <= s.start and s.end <= l.end
                            or s.start <= l.start and l.end <= s.end), None)
                merged.append(doc.char_span(s.start_char, s.end_char, label=s.label_,
                                            kb_id=hit.kb_id_ if hit else s.kb_id_,
                                            alignment_mode="expand") if hit else s)
            doc.ents = filter_spans(merged + [s for k, s in by_offsets.items()])
        else:
            doc.ents = filter_spans(linked)
        return doc


@Language.factory(
    "wenzhi_entity_linker",
    default_config={"db": None, "label": "KB_ENTITY", "min_score": 0.0},
)
def make_entity_linker(nlp: Language, name: str, db: str | None, label: str, min_score: float):
    """`db` None: the KB comes from `set_kb` or, for a loaded pipeline, from its saved copy."""
    return KBEntityLinker(_linker_for(str(db)) if db else None, label=label, min_score=min_score)


def make_nlp(db_path, linker: EntityLinker | None = None) -> Language:
    """spacy.blank("zh") with jieba segmentation and the linker as its only component; the KB
    path stays out of the config (`nlp.to_disk` saves a copy of the KB instead)."""
    import spacy

    nlp = spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": "jieba"}}})
    if linker is not None:
        _LINKERS[str(db_path)] = linker
    nlp.add_pipe("wenzhi_entity_linker").set_kb(db_path)
    return nlp
