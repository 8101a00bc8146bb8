"""networkx views of the store: the k-hop neighbourhood of an entity as a MultiDiGraph.

Nodes are entity full names (kind="entity") or literal tail values (kind="literal"); an edge
head -> tail carries its relation (also the edge key, so parallel relations stay distinct).
A tail naming an entity links to that entity: by exact full name, or by base name when the
base name is unambiguous (one entity), so hops continue through it.
"""
from __future__ import annotations

from collections import deque

import networkx as nx

from wenzhi.kg.store import Entity, TripleStore


def resolve_tail(store: TripleStore, tail: str) -> Entity | None:
    exact = store.entity_by_name(tail)
    if exact is not None:
        return exact
    homonyms = store.entities_by_base(tail)
    return homonyms[0] if len(homonyms) == 1 else None


def neighbourhood(store: TripleStore, entity: Entity | str | int, hops: int = 1,
                  incoming: bool = True, max_nodes: int = 5000) -> nx.MultiDiGraph:
    """Entities and literals within `hops` edges of `entity` (a name, id or Entity).
    `incoming`: also follow triples whose tail names the entity."""
    start = _as_entity(store, entity)
    graph = nx.MultiDiGraph()
    _add_entity_node(graph, start)
    queue = deque([(start, 0)])
    expanded: set[int] = set()
    while queue and graph.number_of_nodes() < max_nodes:
        current, depth = queue.popleft()
        if current.id in expanded or depth >= hops:
            continue
        expanded.add(current.id)
        for t in store.triples(current.id):
            target = resolve_tail(store, t.tail)
            if target is not None:
                _add_entity_node(graph, target)
                graph.add_edge(current.name, target.name, key=t.relation, relation=t.relation)
                queue.append((target, depth + 1))
            else:
                graph.add_node(t.tail, kind="literal")
                graph.add_edge(current.name, t.tail, key=t.relation, relation=t.relation)
        if incoming:
            names = {current.name, current.base} if len(store.entities_by_base(current.base)) == 1 else {current.name}
            for name in names:
                for t in store.triples_by_tail(name):
                    source = store.entity(t.head_id)
                    _add_entity_node(graph, source)
                    graph.add_edge(source.name, current.name, key=t.relation, relation=t.relation)
                    queue.append((source, depth + 1))
    return graph


def _as_entity(store: TripleStore, entity) -> Entity:
    if isinstance(entity, Entity):
        return entity
    found = store.entity(entity) if isinstance(entity, int) else store.entity_by_name(entity)
    if found is None and isinstance(entity, str):
        homonyms = store.entities_by_base(entity)
        found = homonyms[0] if homonyms else None
    if found is None:
        raise KeyError(f"no entity {entity!r} in {store.path}")
    return found


def _add_entity_node(graph: nx.MultiDiGraph, e: Entity) -> None:
    if e.name not in graph or graph.nodes[e.name].get("kind") != "entity":
        graph.add_node(e.name, kind="entity", id=e.id, base=e.base, disambiguation=e.disambiguation)
