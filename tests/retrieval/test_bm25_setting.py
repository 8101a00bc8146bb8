"""One BM25 setting (retrieval/bm25.py): a tantivy directory or a cluster URL, with API-key
or basic auth and TLS options, opened by `open_bm25`; credentials never in what is printed,
logged, pickled or saved. The cluster is osmem-server, behind a TLS front that demands a login
(tests/search_gateway.py) where credentials are the point."""
from __future__ import annotations

import base64
import json
import os
import pickle
import socket
import subprocess
import sys
from itertools import islice

import pytest
from search_gateway import CLUSTER_API_KEY, CLUSTER_PASSWORD, CLUSTER_USER

from wenzhi.retrieval.documents import entity_documents
from wenzhi.retrieval.search_cluster import SearchClusterError
from wenzhi.retrieval.bm25 import SearchSetting, open_bm25, search_setting
from wenzhi.retrieval.tantivy_backend import TantivyRetriever

#: Every form a credential could leak in: as given, URL-quoted, inside a Basic header.
SECRETS = (CLUSTER_API_KEY, CLUSTER_PASSWORD, base64.b64encode(f"{CLUSTER_USER}:{CLUSTER_PASSWORD}".encode()).decode())
NO_CREDENTIALS = {k: "" for k in ("WENZHI_SEARCH", "WENZHI_SEARCH_API_KEY", "WENZHI_SEARCH_USER",
                                  "WENZHI_SEARCH_PASSWORD", "WENZHI_SEARCH_CA_CERTS", "WENZHI_SEARCH_VERIFY",
                                  "WENZHI_SEARCH_FLAVOR")}


def assert_no_secret(text: str | bytes, where: str) -> None:
    for secret in SECRETS:
        found = secret.encode() in text if isinstance(text, bytes) else secret in text
        assert not found, f"a credential appears in {where}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in NO_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def passages_in_cluster(opensearch_url, cmrc_passages):
    """The first 150 CMRC paragraphs in the (unsecured) cluster and in tantivy."""
    docs = cmrc_passages[0]
    retriever = open_bm25(f"{opensearch_url}/setting-passages", must_exist=False)
    retriever.create_index(recreate=True)
    retriever.index(docs)
    return retriever


def test_a_setting_is_a_directory_or_a_cluster_url_and_its_public_form_has_no_credentials(clean_env, tmp_path):
    assert search_setting() is None
    assert search_setting(tmp_path) == SearchSetting(str(tmp_path)) and not search_setting(tmp_path).is_cluster
    clean_env.setenv("WENZHI_SEARCH", str(tmp_path))
    assert search_setting().location == str(tmp_path)  # the environment when nothing is given

    url = f"https://{CLUSTER_USER}:{CLUSTER_PASSWORD}@search.example:9243/proxy/passages?flavor=elasticsearch"
    s = search_setting(url)
    assert (s.location, s.index_name, s.flavor, s.user, s.password) == (
        "https://search.example:9243/proxy", "passages", "elasticsearch", CLUSTER_USER, CLUSTER_PASSWORD)
    assert s.public == "https://search.example:9243/proxy/passages?flavor=elasticsearch"
    for shown in (s.public, repr(s), str(s), pickle.dumps(s)):
        assert_no_secret(shown, "a setting's printed or pickled form")
    assert search_setting("http://h:9200").index_name == "wenzhi-retrieval"  # no path: the default index

    # a pickled setting reads credentials from the receiving process's environment
    clean_env.setenv("WENZHI_SEARCH_API_KEY", CLUSTER_API_KEY)
    received = pickle.loads(pickle.dumps(search_setting("http://h:9200/x", api_key="another-key")))
    assert received.api_key == CLUSTER_API_KEY and received.public == "http://h:9200/x?flavor=opensearch"
    # arguments win over the URL's options, which win over the environment
    clean_env.setenv("WENZHI_SEARCH_FLAVOR", "elasticsearch")
    assert search_setting("http://h:9200/x").flavor == "elasticsearch"
    assert search_setting("http://h:9200/x?flavor=opensearch").flavor == "opensearch"
    assert search_setting("http://h:9200/x?flavor=opensearch", flavor="elasticsearch").flavor == "elasticsearch"
    clean_env.setenv("WENZHI_SEARCH_VERIFY", "0")
    assert not search_setting("http://h:9200/x").verify and "verify=false" in search_setting("http://h:9200/x").public

    # mistakes are refused without repeating a value that may be a secret
    for bad, reason in ((f"http://h:9200/x?api_key={CLUSTER_API_KEY}", "not understood"),
                        ("http://h:9200/x?flavor=solr", "choose one of"),
                        ("http://h:port/x", "not a number"),
                        ("http://h:9200/x?ca_certs=/no/such/ca.pem", "not found")):
        with pytest.raises(ValueError, match=reason) as info:
            search_setting(bad)
        assert_no_secret(str(info.value), "an error message")
    # one way to log in: given here, it sets the environment's other kind aside
    assert search_setting("http://h:9200/x", user=CLUSTER_USER).api_key is None
    with pytest.raises(ValueError, match="not both"):
        search_setting("http://h:9200/x", user=CLUSTER_USER, api_key=CLUSTER_API_KEY)
    clean_env.setenv("WENZHI_SEARCH_USER", CLUSTER_USER)
    with pytest.raises(ValueError, match="both set"):
        search_setting("http://h:9200/x")


def test_open_bm25_reaches_a_secured_cluster_with_an_api_key_or_basic_auth_over_tls(
        clean_env, secured_cluster, passages_in_cluster, cmrc_passages, caplog):
    gateway, ca = secured_cluster
    url = f"{gateway.url}/setting-passages"
    queries = [q for q, _ in cmrc_passages[1][:20]]
    expected = [[(h.id, h.score) for h in passages_in_cluster.search(q, 5)] for q in queries]

    by_key = open_bm25(search_setting(url, api_key=CLUSTER_API_KEY, ca_certs=str(ca)))
    assert [[(h.id, h.score) for h in by_key.search(q, 5)] for q in queries] == expected
    assert gateway.seen[-1] == f"ApiKey {CLUSTER_API_KEY}"
    clean_env.setenv("WENZHI_SEARCH_USER", CLUSTER_USER)  # credentials and CA from the environment
    clean_env.setenv("WENZHI_SEARCH_PASSWORD", CLUSTER_PASSWORD)
    clean_env.setenv("WENZHI_SEARCH_CA_CERTS", str(ca))
    assert [h.id for h in open_bm25(url).search(queries[0], 5)] == [i for i, _ in expected[0]]
    assert gateway.seen[-1].startswith("Basic ")
    assert_no_secret(repr(by_key.client), "the client's repr")

    failures = {
        "wrong password": (search_setting(url, password="not-the-password"), "refused the credentials"),
        "no CA bundle": (search_setting(url, ca_certs=None, environ={**NO_CREDENTIALS, "WENZHI_SEARCH_API_KEY": CLUSTER_API_KEY}),
                         "certificate verify failed"),
        "refused connection": (f"http://127.0.0.1:{closed_port()}/x", "Connection refused"),
        "missing index": (f"{url}-nowhere", "no index 'setting-passages-nowhere'"),
    }
    for case, (setting, reason) in failures.items():
        with pytest.raises(SearchClusterError, match=reason) as info:
            open_bm25(setting)
        assert_no_secret(str(info.value), f"the {case} error")
    # certificate checks off (a test cluster): reachable without the CA bundle
    unverified = search_setting(url, ca_certs="", verify=False, environ={"WENZHI_SEARCH_API_KEY": CLUSTER_API_KEY})
    assert open_bm25(unverified).search(queries[0], 1)[0].id == expected[0][0][0]
    assert_no_secret(caplog.text, "the log")


def test_open_bm25_opens_tantivy_from_a_path_and_says_when_there_is_none(clean_env, tmp_path, cmrc_passages):
    docs = cmrc_passages[0][:20]
    TantivyRetriever.build(tmp_path / "bm25", docs, progress=False)
    assert open_bm25(tmp_path / "bm25").search(docs[3].title, 1)[0].id == docs[3].id
    clean_env.setenv("WENZHI_SEARCH", str(tmp_path / "bm25"))
    assert open_bm25().count() == 20
    with pytest.raises(FileNotFoundError, match="no BM25 index at"):
        open_bm25(tmp_path / "elsewhere")
    clean_env.delenv("WENZHI_SEARCH")
    with pytest.raises(ValueError, match="WENZHI_SEARCH"):
        open_bm25()


def _wenzhi(*argv: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wenzhi", *argv], capture_output=True, text=True, env=env, timeout=120)


def test_commands_take_the_setting_and_never_echo_a_credential(secured_cluster, kb_db, kb_store):
    gateway, ca = secured_cluster
    env = {**os.environ, **NO_CREDENTIALS, "WENZHI_SEARCH_PASSWORD": CLUSTER_PASSWORD, "WENZHI_SEARCH_CA_CERTS": str(ca)}
    url = f"{gateway.url}/cli-entities"
    outputs = []

    # -v: debug logging, the clients' own request logs included
    built = _wenzhi("-v", "index", "bm25", "--kind", "entities", "--db", str(kb_db), "--limit", "300",
                    "--search", url, "--search-user", CLUSTER_USER, env=env)
    outputs.append(built.stdout + built.stderr)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "indexed 300 entities" in built.stdout and f"{url}?flavor=opensearch" in built.stdout
    name = next(d.title for d in islice(entity_documents(kb_store), 300)  # one of the 300 indexed
                if sum("\u4e00" <= c <= "\u9fff" for c in d.title) >= 3)
    found = _wenzhi("-v", "index", "bm25-search", name, "-k", "3", "--filter-kind", "entity",
                    env={**env, "WENZHI_SEARCH": url, "WENZHI_SEARCH_USER": CLUSTER_USER})
    outputs.append(found.stdout + found.stderr)
    assert found.returncode == 0, found.stderr[-2000:]
    assert json.loads(found.stdout.splitlines()[0])["title"] == name
    by_key = _wenzhi("index", "bm25-search", name, "--search", url, "--search-api-key", CLUSTER_API_KEY, env=env)
    outputs.append(by_key.stdout + by_key.stderr)
    assert by_key.returncode == 0 and by_key.stdout == found.stdout

    refused = {
        "wrong password": ("--search", f"https://{CLUSTER_USER}:{CLUSTER_PASSWORD}x@{url.split('://')[1]}"),
        "closed port": ("--search", f"http://127.0.0.1:{closed_port()}/x"),
        "old spelling": ("--url", f"http://127.0.0.1:{closed_port()}"),
    }
    for case, flags in refused.items():
        proc = _wenzhi("index", "bm25-search", name, *flags, "--search-user", CLUSTER_USER, env=env)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (case, proc.stderr[-2000:])
        assert ("refused the credentials" if case == "wrong password" else "Connection refused") in proc.stderr, case
    for command in (["index", "bm25"], ["index", "bm25-search"], ["serve"], ["evaluate"], ["pretrain", "prepare"]):
        helped = _wenzhi(*command, "--help", env={**env, "WENZHI_SEARCH_API_KEY": CLUSTER_API_KEY})
        assert helped.returncode == 0 and "--search-api-key" in helped.stdout
        outputs.append(helped.stdout + helped.stderr)
    for i, text in enumerate(outputs):
        assert_no_secret(text, f"command output {i}")
    assert gateway.seen.count(f"ApiKey {CLUSTER_API_KEY}") >= 2  # the flag's key reached the cluster
