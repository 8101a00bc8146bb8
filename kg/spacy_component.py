"""spaCy component: entity linking into `doc.ents`, each Span's `kb_id_` the entity's full name.

Use `make_nlp(db_path)` for a ready pipeline (`spacy.blank("zh")` with the jieba segmenter,
fully offline), or `nlp.add_pipe("wenzhi_entity_linker", config={"db": path})` on your own.
When an earlier component (a model's NER) already set `doc.ents`, its spans are linked
(the linker's NER-span hook) instead of detecting mentions from the alias index.
"""
from __future__ import annotations

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
    def __init__(self, linker: EntityLinker, label: str = "KB_ENTITY", min_score: float = 0.0):
        self.linker = linker
        self.label = label
        self.min_score = min_score

    def __call__(self, doc: Doc) -> Doc:
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
    if not db:
        raise ValueError('wenzhi_entity_linker needs config={"db": "path/to/kb.sqlite"}')
    return KBEntityLinker(_linker_for(str(db)), label=label, min_score=min_score)


def make_nlp(db_path, linker: EntityLinker | None = None) -> Language:
    """spacy.blank("zh") with jieba segmentation and the linker as its only component."""
    import spacy

    nlp = spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": "jieba"}}})
    if linker is not None:
        _LINKERS[str(db_path)] = linker
    nlp.add_pipe("wenzhi_entity_linker", config={"db": str(db_path)})
    return nlp
