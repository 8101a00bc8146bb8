"""Knowledge graph and entity linking: the layer every other part of wenzhi stands on."""
from kg.names import normalize, parse_name
from kg.store import Entity, Triple, TripleStore
from kg.alias_index import AliasIndex
from kg.linker import EntityLinker, Mention

__all__ = [
    "TripleStore", "AliasIndex", "EntityLinker", "Entity", "Triple", "Mention",
    "parse_name", "normalize",
]
