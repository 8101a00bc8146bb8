"""The `wenzhi pretrain prepare` config: corpora, strategies, curriculum, and how the job is cut
into partitions. See model/prepare.py for the keys with an example."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

TEXT_STRATEGIES = ("char", "word", "phrase", "entity", "retrieval", "uktp")
SEGMENTERS = ("rjieba", "jieba")


@dataclass
class CorpusSpec:
    path: str
    format: str
    use: str = ""  # text | triples | both (default: triples for agrikg, text otherwise)
    limit: int | None = None  # at most this many items (documents or pairs)
    skip: int = 0  # leave out the first items (e.g. a disjoint slice of the same corpus)
    text_field: str = "text"

    def __post_init__(self):
        if not self.use:
            self.use = "triples" if self.format == "agrikg" else "text"
        if self.use not in ("text", "triples", "both"):
            raise ValueError(f"corpus {self.path}: use must be text, triples or both, not {self.use!r}")


@dataclass
class PrepareConfig:
    output: str
    corpora: list[CorpusSpec]
    seq_len: int = 128
    seed: int = 0
    tokenizer: str | None = None
    kb: str | None = None
    mask_ratio: float = 0.15
    heldout_fraction: float = 0.1
    strategies: dict[str, float] = field(default_factory=lambda: {"word": 1.0})
    curriculum: object = None  # None | "default" | list of stage dicts
    uktp: dict[str, float] = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    rows_per_shard: int = 65536
    max_linked_pairs: int = 2  # UKTP examples per text chunk from linking
    # a BM25 index of passages that can serve as the knowledge segment (augment.sources says in
    # which order of preference): a tantivy directory (`wenzhi index bm25 --kind passages
    # --output DIR`) or a cluster index URL, never with a login in it (retrieval/bm25.py). On the command
    # line `--search` overrides it, and WENZHI_SEARCH stands in when it is not set.
    retrieval_index: str | None = None
    # Items (documents, pairs, dialogues) per partition: the unit a worker prepares, packs and
    # writes on its own. The output depends on it (rows never mix partitions), never on how many
    # workers run them.
    partition_items: int = 4096
    # Word segmentation and POS tags for text without them: rjieba (jieba's Rust port, ~18x
    # faster, the same words for 98% of review lines) or jieba (the Python original, via spaCy).
    segmenter: str = "rjieba"
    base_dir: str = "."

    @classmethod
    def from_dict(cls, raw: dict, base_dir: Path = Path(".")) -> "PrepareConfig":
        raw = dict(raw)
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known - {'base_dir'})}")
        for key in ("output", "corpora"):
            if key not in raw:
                raise ValueError(f"config needs {key!r}")
        raw["corpora"] = [CorpusSpec(**c) for c in raw["corpora"]]
        cfg = cls(**raw, base_dir=str(base_dir)) if "base_dir" not in raw else cls(**raw)
        bad = set(cfg.strategies) - set(TEXT_STRATEGIES)
        if bad:
            raise ValueError(f"unknown strategies {sorted(bad)}; choose from {TEXT_STRATEGIES}")
        if cfg.seq_len < 16:
            raise ValueError("seq_len must be at least 16")
        if cfg.partition_items < 1:
            raise ValueError("partition_items must be at least 1")
        if cfg.segmenter not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {SEGMENTERS}, not {cfg.segmenter!r}")
        return cfg

    def resolve(self, path: str | None) -> Path | None:
        """Absolute paths as given; else relative to the config file, or to the working directory
        (command-line overrides), if it exists there; else inside the data directory (a clear
        error if missing)."""
        if path is None:
            return None
        p = Path(path).expanduser()
        if p.is_absolute():
            return p
        for local in (Path(self.base_dir) / p, Path.cwd() / p):
            if local.exists():
                return local
        from wenzhi.kg.datadir import data_path

        return data_path(str(p))

    def to_dict(self) -> dict:
        """The config as plain data (what a worker on another machine is sent)."""
        return asdict(self)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PrepareConfig:
    """A config file, or a shipped one by name (`prepare_tiny`: model/config_files.py), with
    `--set` overrides (dotted keys reach `corpora.N.*`, `strategies.*`, `augment.*`, ...)."""
    from wenzhi.model.config_files import apply_overrides, read_config

    from dataclasses import fields

    from wenzhi.model.augment import AugmentConfig
    from wenzhi.model.uktp import UKTPConfig

    raw, base_dir = read_config(path)
    mappings = {"strategies": set(TEXT_STRATEGIES), "augment": {f.name for f in fields(AugmentConfig)},
                "uktp": {f.name for f in fields(UKTPConfig)}}
    return PrepareConfig.from_dict(apply_overrides(raw, overrides or [], PrepareConfig, dict_keys=mappings),
                                   base_dir=base_dir)
