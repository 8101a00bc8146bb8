"""Knowledge graph and entity linking: the layer every other part of wenzhi stands on."""
from wenzhi.kg.names import normalize, parse_name
from wenzhi.kg.store import Entity, Triple, TripleStore
from wenzhi.kg.alias_index import AliasIndex
from wenzhi.kg.linker import EntityLinker, Mention

__all__ = [
    "TripleStore", "AliasIndex", "EntityLinker", "Entity", "Triple", "Mention",
    "parse_name", "normalize",
]
