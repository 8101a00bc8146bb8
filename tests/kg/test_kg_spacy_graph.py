"""The spaCy component and the networkx views, on the real KB slice."""
from __future__ import annotations

import spacy

from wenzhi.kg.graph import neighbourhood
from wenzhi.kg.spacy_component import make_nlp


def test_spacy_component_sets_ents_with_kb_ids(kb_db, kb_store):
    nlp = make_nlp(kb_db)
    assert nlp.pipe_names == ["wenzhi_entity_linker"]
    text = "我很好奇龙编站的坐标是什么啊？请问刘晓华的主讲课程是什么"
    doc = nlp(text)
    ents = {e.kb_id_: e for e in doc.ents}
    assert "龙编站" in ents and "刘晓华（广东工业大学教授）" in ents
    span = ents["刘晓华（广东工业大学教授）"]
    assert span.label_ == "KB_ENTITY" and text[span.start_char : span.end_char] == "刘晓华"
    assert all(kb_store.entity_by_name(e.kb_id_) is not None for e in doc.ents)


def test_spacy_component_links_existing_ner_spans(kb_db):
    nlp = make_nlp(kb_db)
    doc = nlp.make_doc("请问刘晓华的主讲课程是什么")
    doc.ents = [doc.char_span(2, 5, label="PER", alignment_mode="expand")]
    doc = nlp.get_pipe("wenzhi_entity_linker")(doc)
    assert [(e.text, e.label_, e.kb_id_) for e in doc.ents] == [("刘晓华", "PER", "刘晓华（广东工业大学教授）")]


def test_add_pipe_by_name(kb_db):
    nlp = spacy.blank("zh")  # character segmentation: spans still align
    nlp.add_pipe("wenzhi_entity_linker", config={"db": str(kb_db)})
    doc = nlp("龙编站的坐标")
    assert [e.kb_id_ for e in doc.ents] == ["龙编站"]


def test_neighbourhood_links_entity_tails(kb_store):
    # find an entity with a tail that is itself an entity, and check the graph follows it
    for e in kb_store.iter_entities():
        tails = [t for t in kb_store.triples(e.id) if kb_store.entity_by_name(t.tail) is not None]
        if tails and e.name != tails[0].tail:
            break
    link = tails[0]
    graph = neighbourhood(kb_store, e.name, hops=2)
    assert graph.nodes[e.name]["kind"] == "entity" and graph.nodes[e.name]["id"] == e.id
    assert graph.nodes[link.tail]["kind"] == "entity"
    assert graph.has_edge(e.name, link.tail, key=link.relation)
    one_hop = neighbourhood(kb_store, e.id, hops=1, incoming=False)
    assert one_hop.out_degree(e.name) == len(kb_store.triples(e.id))
    assert set(one_hop.nodes) <= set(graph.nodes)
    literal = [n for n, d in one_hop.nodes(data=True) if d["kind"] == "literal"]
    for n in literal:
        assert kb_store.entity_by_name(n) is None
