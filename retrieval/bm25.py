"""Where "the BM25 index" is: one setting for every user of BM25 (`wenzhi index bm25` and
`bm25-search`, the QA service's fuzzy entity fallback, `pretrain prepare`'s retrieval-augmented
masking), and `open_bm25`, the one function that opens it.

    --search DIR                             an embedded tantivy index (`wenzhi index bm25 --out DIR`)
    --search http(s)://HOST:PORT[/PREFIX]/INDEX  an index on an OpenSearch/Elasticsearch cluster
    WENZHI_SEARCH                            the same, wherever no flag (or config key) gives one

Credentials and TLS options, each a flag or an environment variable (the flag wins):

    WENZHI_SEARCH_API_KEY      --search-api-key    the encoded API key (`Authorization: ApiKey ...`)
    WENZHI_SEARCH_USER         --search-user       basic auth (user:password@ in the URL works too)
    WENZHI_SEARCH_PASSWORD     --search-password
    WENZHI_SEARCH_CA_CERTS     --search-ca-certs   CA bundle that signed the cluster's certificate
    WENZHI_SEARCH_VERIFY=0     --search-no-verify  accept any certificate (test clusters only)
    WENZHI_SEARCH_FLAVOR       --search-flavor     client: opensearch (default) or elasticsearch

`SearchSetting.public` is what travels to other processes (the service's worker, prepare's
workers, Dask workers on other machines) and what is written down (prepare's job and shard
metadata): the location with the non-secret options as a query string, e.g.
`https://es:9200/passages?flavor=elasticsearch&ca_certs=/etc/ca.pem`. It never holds a
credential: every process reads those from its own environment, and the command line puts the
ones it was given there for the processes it starts. A setting pickles as its public form.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

FLAVORS = ("opensearch", "elasticsearch")  # the client libraries search_cluster.py speaks through
DEFAULT_INDEX = "wenzhi-retrieval"  # a cluster URL without a path
ENV_LOCATION = "WENZHI_SEARCH"
ENV_FLAVOR = "WENZHI_SEARCH_FLAVOR"
ENV_API_KEY = "WENZHI_SEARCH_API_KEY"
ENV_USER = "WENZHI_SEARCH_USER"
ENV_PASSWORD = "WENZHI_SEARCH_PASSWORD"
ENV_CA_CERTS = "WENZHI_SEARCH_CA_CERTS"
ENV_VERIFY = "WENZHI_SEARCH_VERIFY"
#: Options a cluster URL's query string may carry; credentials never go there (URLs get logged).
URL_OPTIONS = ("flavor", "ca_certs", "verify")
_FALSE = ("0", "false", "no", "off")


def is_cluster_url(location: str | os.PathLike | None) -> bool:
    return isinstance(location, str) and location.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class SearchSetting:
    """A tantivy directory, or a cluster's base URL and index with how to reach it."""

    location: str  # the directory, or scheme://host:port[/prefix] without credentials
    index_name: str | None = None  # clusters only
    flavor: str = "opensearch"
    ca_certs: str | None = None
    verify: bool = True
    api_key: str | None = field(default=None, repr=False, compare=False)
    user: str | None = field(default=None, repr=False, compare=False)
    password: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_cluster(self) -> bool:
        return self.index_name is not None

    @property
    def public(self) -> str:
        """The setting without credentials: safe to print, log, save and send to workers."""
        if not self.is_cluster:
            return self.location
        options = {"flavor": self.flavor, **({"ca_certs": self.ca_certs} if self.ca_certs else {}),
                   **({} if self.verify else {"verify": "false"})}
        return f"{self.location}/{self.index_name}?{urlencode(options)}"

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key, self.password) if s)

    def __repr__(self) -> str:
        auth = "api key" if self.api_key else "basic" if self.user else "none"
        return f"SearchSetting({self.public!r}, auth={auth})"

    def __str__(self) -> str:
        return self.public

    def __reduce__(self):
        # Another process gets the public form and reads credentials from its own environment.
        return search_setting, (self.public,)


def search_setting(location: str | os.PathLike | None = None, *, flavor: str | None = None,
                   api_key: str | None = None, user: str | None = None, password: str | None = None,
                   ca_certs: str | None = None, verify: bool | None = None,
                   environ: dict | None = None) -> SearchSetting | None:
    """The setting from these arguments, else the URL's own options, else the environment
    (WENZHI_SEARCH...). None when no location is given anywhere."""
    env = os.environ if environ is None else environ
    if location is None or location == "":
        location = env.get(ENV_LOCATION) or None
    if location is None:
        return None
    if not is_cluster_url(str(location)):
        return SearchSetting(str(location))
    parts = urlsplit(str(location))
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - set(URL_OPTIONS)
    if unknown:  # names only: a value put there by mistake may be a secret
        raise ValueError(f"search URL options {sorted(unknown)} are not understood (known: {list(URL_OPTIONS)}); "
                         f"credentials go in {ENV_API_KEY} or {ENV_USER}/{ENV_PASSWORD}, not the URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"search URL {parts.scheme}://{parts.hostname}: the port is not a number") from None
    if not parts.hostname:
        raise ValueError("search URL has no host: give http(s)://HOST:PORT/INDEX")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    segments = [s for s in parts.path.split("/") if s]
    index_name = unquote(segments[-1]) if segments else DEFAULT_INDEX
    base = f"{parts.scheme.lower()}://{host}{f':{port}' if port else ''}" + "".join(f"/{s}" for s in segments[:-1])

    flavor = flavor or query.get("flavor") or env.get(ENV_FLAVOR) or "opensearch"
    if flavor not in FLAVORS:
        raise ValueError(f"search flavor {flavor!r}: choose one of {FLAVORS}")
    ca_certs = ca_certs or query.get("ca_certs") or env.get(ENV_CA_CERTS) or None
    if ca_certs and not Path(ca_certs).is_file():
        raise ValueError(f"CA bundle {ca_certs} not found")
    if verify is None:
        verify = (query.get("verify") or env.get(ENV_VERIFY) or "1").lower() not in _FALSE
    if parts.username:  # user:password@ in the URL (arguments still win)
        user = user or unquote(parts.username)
        password = password if password is not None else unquote(parts.password or "")
    if api_key and user:
        raise ValueError("give the search cluster an API key or a user and password, not both")
    if not api_key and not user:  # none given here (or in the URL): the environment's
        api_key, user = env.get(ENV_API_KEY) or None, env.get(ENV_USER) or None
        if api_key and user:
            raise ValueError(f"{ENV_API_KEY} and {ENV_USER} are both set: give the cluster one way to log in")
    if user and password is None:
        password = env.get(ENV_PASSWORD)
    if password and not user:
        raise ValueError(f"a search password without a user: set {ENV_USER} or --search-user")
    return SearchSetting(base, index_name, flavor, ca_certs, verify, api_key, user, password)


def open_bm25(setting: SearchSetting | str | os.PathLike | None = None, *, must_exist: bool = True,
              timeout: float = 30.0):
    """The BM25 index the setting names (None: WENZHI_SEARCH): a `TantivyRetriever` for a
    directory, a `SearchClusterRetriever` for a cluster URL. With `must_exist`, the index is
    checked now: a missing directory is a FileNotFoundError, an unreachable cluster, refused
    credentials or a missing index a SearchClusterError, each with a message for the user."""
    if not isinstance(setting, SearchSetting):
        setting = search_setting(setting)
    if setting is None:
        raise ValueError(f"no BM25 index given: pass --search DIR_OR_URL or set {ENV_LOCATION}")
    if not setting.is_cluster:
        from .tantivy_backend import META_FILE, TantivyRetriever

        if must_exist and not (Path(setting.location) / META_FILE).exists():
            raise FileNotFoundError(f"no BM25 index at {setting.location} (build one with `wenzhi index bm25 --out DIR`)")
        return TantivyRetriever(setting.location)
    from .search_cluster import SearchClusterRetriever, connect

    basic = (setting.user, setting.password or "") if setting.user else None
    client = connect(setting.location, setting.flavor, timeout, api_key=setting.api_key, basic_auth=basic,
                     ca_certs=setting.ca_certs, verify_certs=setting.verify)
    retriever = SearchClusterRetriever(client, setting.index_name, redact=setting.secrets, where=setting.location)
    if must_exist:
        retriever.require_index()
    return retriever


# -- the command line ---------------------------------------------------------------------------
def add_search_arguments(parser: argparse.ArgumentParser, *old_spellings: str, what: str = "BM25 index") -> None:
    """`--search` and its credential/TLS flags. No default is read from the environment here, so
    `--help` never shows a value; `search_from_args` reads the environment."""
    from wenzhi.cli_conventions import add_option

    add_option(parser, "--search", old=old_spellings, dest="search", metavar="DIR_OR_URL",
               help=f"{what}: a tantivy directory or http(s)://HOST:PORT/INDEX of an OpenSearch/"
                    f"Elasticsearch cluster (env {ENV_LOCATION})")
    parser.add_argument("--search-flavor", choices=FLAVORS, help=f"cluster client (env {ENV_FLAVOR}; default opensearch)")
    parser.add_argument("--search-api-key", metavar="KEY", help=f"cluster API key (prefer env {ENV_API_KEY}: "
                        "a flag's value shows in the process list)")
    parser.add_argument("--search-user", metavar="USER", help=f"cluster basic-auth user (env {ENV_USER})")
    parser.add_argument("--search-password", metavar="PASSWORD", help=f"cluster basic-auth password (prefer env {ENV_PASSWORD})")
    parser.add_argument("--search-ca-certs", metavar="PEM", help=f"CA bundle for an https cluster (env {ENV_CA_CERTS})")
    parser.add_argument("--search-no-verify", action="store_true",
                        help=f"accept any TLS certificate (test clusters only; env {ENV_VERIFY}=0)")


def search_from_args(args: argparse.Namespace, location: str | None = None) -> SearchSetting | None:
    """The setting from parsed flags (`location` overrides --search), else the environment.
    Credentials it was given go into this process's environment, where the processes it starts
    (the service's worker, prepare's workers, a local Dask cluster) read them, so that they are
    never pickled into their arguments. The cluster clients' per-retry warnings are hushed."""
    setting = search_setting(location or args.search, flavor=args.search_flavor, api_key=args.search_api_key,
                             user=args.search_user, password=args.search_password,
                             ca_certs=args.search_ca_certs, verify=False if args.search_no_verify else None)
    if setting is None or not setting.is_cluster:
        return setting
    for name, value in ((ENV_API_KEY, setting.api_key), (ENV_USER, setting.user), (ENV_PASSWORD, setting.password)):
        if value:
            os.environ[name] = value
    if logging.getLogger().level > logging.DEBUG:  # the clients log each failed try with a traceback
        for name in ("opensearch", "elastic_transport"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return setting
