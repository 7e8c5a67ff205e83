"""nestvec.distributed on a local Ray (one session for the module, 2 CPUs): sharded
results equal a single collection's with the same rows (ids and scores, ties
included), writes across shards, reopen, and the faults: a writer actor killed in
the middle of a multi-shard add, a driver killed before its cluster commit, a reader
actor killed (restarted, or a clear error)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

ray = pytest.importorskip("ray")

import nestvec as nv  # noqa: E402
from nestvec.distributed import ShardedCollection, ShardUnavailableError, routing, runtime  # noqa: E402
from ray_helpers import deadline_fixture  # noqa: E402

_deadline = deadline_fixture(180)

D = 32
SCHEMA = {"g": "int32", "tag": "string"}


def rows(n, seed, start):
    """Vectors with many exact ties: small integer values, and every 7th row a copy
    of an earlier one (same scores on different shards: the row order decides)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, D)).astype(np.float32)
    x[7::7] = x[2:n - 5:7][: len(x[7::7])]
    x[np.abs(x).sum(1) == 0, 0] = 1
    ids = np.arange(start, start + n)
    meta = {"g": (ids % 5).astype(np.int32), "tag": [f"t{i % 3}" for i in ids]}
    return x, ids, meta


@pytest.fixture(scope="module")
def session(ray_session):
    return ray_session


def test_routing_is_stable_and_spread():
    # part of the format: these values must never change
    assert routing.HASH == "splitmix64/1"
    assert routing.shard_of(pa.array([0, 1, 2, 3, -1, 2**63 - 1]), 4).tolist() == [3, 1, 2, 1, 0, 3]
    assert routing.shard_of(pa.array(["", "a", "b", "ab", "ba", "héllo"]), 4).tolist() == [3, 3, 3, 2, 3, 1]
    sliced = pa.array(["x", "abc", "zz"])[1:]
    assert routing.id_hash(sliced).tolist() == routing.id_hash(pa.array(["abc", "zz"])).tolist()
    counts = np.bincount(routing.shard_of(pa.array(np.arange(40000)), 4))
    assert counts.min() > 9000


def test_no_cluster_needed(tmp_path):
    """create/open need no Ray; the first write or read starts it locally when no
    cluster is connected (the module's other tests then share that session)."""
    was = ray.is_initialized()
    ShardedCollection.create(tmp_path / "s", shards=2, dim=D).close()
    with ShardedCollection.open(tmp_path / "s", read_only=True) as r:
        assert r.search(np.ones(D), k=3).num_rows == 0 and r.count() == 0  # empty: no actor asked
    assert ray.is_initialized() == was
    with ShardedCollection.open(tmp_path / "s") as w:
        w.add(rows(20, 1, 0)[0])
    with ShardedCollection.open(tmp_path / "s", read_only=True) as r:
        assert r.search(np.ones(D), k=3).num_rows == 3
    assert ray.is_initialized()


@pytest.fixture(scope="module")
def pair(session, tmp_path_factory):
    """A 4-shard collection and a single collection fed the same calls."""
    base = tmp_path_factory.mktemp("pair")
    sc = ShardedCollection.create(base / "sharded", shards=4, dim=D, schema=SCHEMA)
    one = nv.Collection.create(base / "single", dim=D, schema=SCHEMA)
    for b, n in enumerate((300, 1, 97, 200)):
        x, ids, meta = rows(n, b, 1000 * b)
        for c in (sc, one):
            c.add(x, ids=ids, metadata=meta)
    x, _, meta = rows(50, 9, 0)
    assert sc.add(x, metadata=meta).equals(one.add(x, metadata=meta))  # generated ids
    yield sc, one
    sc.close()
    one.close()


def queries(n=5, seed=42):
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def same(sc, one, funnel=None, **kw):
    a, b = sc.search(queries(), funnel=funnel, **kw), one.search(queries(), **kw)
    assert a.equals(b), (kw, a.slice(0, 12).to_pydict(), b.slice(0, 12).to_pydict())


def test_search_equals_single_collection(pair):
    sc, one = pair
    assert sc.count() == one.count() == 648
    for mode in ("flat", "binary"):
        for k in (1, 10, 700):
            same(sc, one, mode=mode, k=k)
        same(sc, one, mode=mode, k=10, columns=["tag", "g", "vector"])
        same(sc, one, mode=mode, k=10, filter=nv.field("g") == 3)
        same(sc, one, mode=mode, k=10, filter="g >= 1 AND tag = 't2'")
        same(sc, one, mode=mode, k=5, filter=nv.field("g") == 99)  # nothing matches
    same(sc, one, mode="flat", k=10, dim=16)
    same(sc, one, mode="binary", k=10, dim=16)
    q1 = queries(1)[0]
    assert sc.search(q1, k=10, mode="flat").equals(one.search(q1, k=10, mode="flat"))
    # the two-round funnel is exactly the single collection's funnel
    for kw in ({}, {"filter": nv.field("g") < 2}, {"ladder": (8, 16)}, {"dim": 16}):
        same(sc, one, mode="funnel", k=5, rescore=4, funnel="two_round", **kw)
    same(sc, one, mode="auto", k=5, rescore=4, funnel="two_round")
    # the per-shard funnel rescores a superset of that shortlist: never worse
    a = sc.search(queries(), k=5, rescore=4, mode="funnel", funnel="per_shard").column("score").to_numpy()
    b = one.search(queries(), k=5, rescore=4, mode="funnel").column("score").to_numpy()
    assert (a.reshape(-1, 5) >= b.reshape(-1, 5) - 1e-6).all()


def test_reads_equal_single_collection(pair):
    sc, one = pair
    ids = [2000, 5, 99999, 1001, 0, 3000]
    assert sc.get(ids).equals(one.get(ids))
    assert sc.get(ids, columns=["vector"]).equals(one.get(ids, columns=["vector"]))
    assert sc.get([]).equals(one.get([]))
    assert sc.count(filter=nv.field("tag") == "t1") == one.count(filter=nv.field("tag") == "t1")
    assert sc.to_table().equals(one.to_table())
    assert sc.to_table(columns=["g"], filter="g = 2").equals(one.to_table(columns=["g"], filter="g = 2"))
    with pytest.raises(ValueError, match="columns"):
        sc.search(queries(), columns=["nope"])
    with pytest.raises(ValueError, match="mode"):
        sc.search(queries(), mode="ivf")
    with pytest.raises(ValueError, match="funnel"):
        sc.search(queries(), funnel="global")
    with pytest.raises(ValueError):
        sc.search(queries(), filter=nv.field("nope") == 1)


def test_writes_equal_single_collection_and_stay_on_their_shard(pair):
    sc, one = pair

    def ids_per_shard():
        out = []
        for path, v in zip(sc.shard_paths, sc.shard_versions):
            with nv.open(path, version=v) as c:
                out.append(set(c.to_table(columns=["id"]).column("id").to_pylist()))
        return out

    before = ids_per_shard()
    assert sum(map(len, before)) == sc.count()
    v = sc.version
    assert sc.delete(ids=[0, 1, 2, 1000, 2001, 3003, 424242]) == one.delete(ids=[0, 1, 2, 1000, 2001, 3003]) == 6
    assert sc.delete(filter=nv.field("g") == 4) == one.delete(filter=nv.field("g") == 4) > 100
    assert sc.delete(ids=[5, 6, 7], filter="tag = 't0'") == one.delete(ids=[5, 6, 7], filter="tag = 't0'") == 1
    assert sc.delete(ids=[424242]) == 0
    assert sc.version == v + 3  # one cluster version per write that changed rows
    x, _, meta = rows(40, 77, 0)
    up = np.array([3, 4, 1002, 2003, 3004, 3100, 5000] + list(range(3150, 3183)))  # old and new ids
    for c in (sc, one):
        c.upsert(x, ids=up, metadata=meta)
    after = ids_per_shard()
    for s, (b, a) in enumerate(zip(before, after)):
        for i in up.tolist():
            if i in b:
                assert i in a, f"id {i} left shard {s}"
    same(sc, one, mode="flat", k=20)
    same(sc, one, mode="binary", k=20, filter=nv.field("g") != 1)
    same(sc, one, mode="funnel", k=5, rescore=3, funnel="two_round")
    assert sc.to_table().equals(one.to_table())
    with pytest.raises(ValueError, match="already in the collection"):
        sc.add(x[:2], ids=[3, 999999])
    with pytest.raises(ValueError, match="vectors"):
        sc.add(np.zeros((2, D + 1)), ids=[7000, 7001])
    assert sc.get([999999]).num_rows == 0  # the failed add committed nothing anywhere
    assert sc.count() == one.count()


def test_reader_layouts_agree(pair):
    """One reader actor searching all four shards as one (the default here: one
    node) and two actors of two shards each (two unions, and the two-round funnel
    across them) give the single collection's answers after the deletes and upserts
    above; the funnel of the actor holding every shard is the single collection's
    own. (One actor per shard: the per-shard path, which index searches take.)"""
    sc, one = pair
    assert sc.explain(queries(), k=5, mode="flat")["per_shard"][0]["shards"] == [0, 1, 2, 3]
    if os.geteuid() == 0:  # readers run at the driver's priority, not Ray's worker niceness
        assert os.getpriority(os.PRIO_PROCESS, sc.reader_pids()[0]) == os.getpriority(os.PRIO_PROCESS, 0)
    funnel = one.search(queries(), k=5, rescore=3, mode="funnel")
    assert sc.search(queries(), k=5, rescore=3, mode="funnel", funnel="per_shard").equals(funnel)
    cases = ({"mode": "flat", "k": 700}, {"mode": "binary", "k": 10, "filter": "g >= 1 AND tag = 't2'"},
             {"mode": "flat", "k": 10, "columns": ["tag", "vector"], "filter": nv.field("g") != 0},
             {"mode": "flat", "k": 10, "min_score": 0.3}, {"mode": "binary", "k": 10, "dim": 16})
    for kw in cases:
        same(sc, one, **kw)
    with ShardedCollection.open(sc.path, read_only=True, shards_per_reader=2) as r:
        plan = r.explain(queries(), k=5, mode="binary")["per_shard"]
        assert [p.get("shards") for p in plan] == [[0, 2], [1, 3], None, None]
        for kw in cases:
            same(r, one, **kw)
        same(r, one, mode="funnel", k=5, rescore=3, funnel="two_round", ladder=(8, 16))
        got = r.search(queries(), k=5, rescore=3, mode="funnel").column("score").to_numpy()
        assert (got >= funnel.column("score").to_numpy() - 1e-6).all()


@pytest.mark.slow  # a compiled graph's first search takes seconds here (compiling, the actors' loops)
def test_compiled_graph(pair):
    """The fan-out through a Ray compiled graph: the same answers, an error raised in
    an actor comes back as itself, and a killed reader turns the graph off (plain
    calls take over, the actor restarted)."""
    sc, one = pair
    want = one.search(queries(), k=10, mode="flat")
    with ShardedCollection.open(sc.path, read_only=True, compiled_graph=True, shards_per_reader=3) as r:
        assert r.search(queries(), k=10, mode="flat").equals(want)
        same(r, one, mode="binary", k=10, filter="g >= 1 AND tag = 't2'")
        same(r, one, mode="flat", k=10, columns=["tag", "vector"])
        assert runtime.fan_graph(r._readers_key) is not None
        with pytest.raises(ValueError, match="dim"):  # raised in the actors, through the graph
            r.search(queries(), mode="binary", dim=12)
        assert r.search(queries(), k=10, mode="flat").equals(want)
        os.kill(r.reader_pids()[1], signal.SIGKILL)
        for _ in range(2):  # the graph is gone: plain calls (the actor restarted)
            assert r.search(queries(), k=10, mode="flat").equals(want)
        assert runtime.fan_graph(r._readers_key) is None


def test_reopen_versions_compact(pair, tmp_path):
    sc, one = pair
    v = sc.version
    want = one.search(queries(), k=10, mode="flat")
    with ShardedCollection.open(sc.path, read_only=True) as r:
        assert r.search(queries(), k=10, mode="flat").equals(want)
        with ShardedCollection.open(sc.path, version=2) as old:
            assert old.count() == 301
        with pytest.raises(PermissionError):
            r.add(queries(1), ids=[1])
        with pytest.raises(nv.LockError):
            ShardedCollection.open(sc.path)
        one.add(rows(5, 50, 8000)[0], ids=np.arange(8000, 8005))
        sc.add(rows(5, 50, 8000)[0], ids=np.arange(8000, 8005))
        assert r.count() == sc.count() - 5  # its version, until refresh
        assert r.refresh() == sc.version
        assert r.search(queries(), k=10, mode="flat").equals(one.search(queries(), k=10, mode="flat"))
    res = sc.compact(keep_versions=2)
    assert res["cluster_manifests"] > 0 and res["segments"] > 0
    assert [x["version"] for x in sc.versions()] == [v + 1, v + 2]
    same(sc, one, mode="flat", k=10)
    same(sc, one, mode="binary", k=10)
    with pytest.raises(KeyError):
        ShardedCollection.open(sc.path, version=2)
    with pytest.raises(nv.CollectionNotFound, match="single collection"):
        ShardedCollection.open(one.path)


def test_other_layouts(session, tmp_path):
    # one shard; string ids; l2 float32 without codes
    for shards in (1, 2):
        sc = ShardedCollection.create(tmp_path / f"s{shards}", shards=shards, dim=D, dtype="float32",
                                      metric="l2", binary=False, id_type="string")
        one = nv.Collection.create(tmp_path / f"o{shards}", dim=D, dtype="float32", metric="l2", binary=False,
                                   id_type="string")
        x = rows(120, shards, 0)[0]
        ids = [f"doc-{i}" for i in range(120)]
        sc.add(x, ids=ids)
        one.add(x, ids=ids)
        same(sc, one, mode="auto", k=7)
        same(sc, one, mode="flat", k=7, dim=8)
        assert sc.get(["doc-3", "nope", "doc-77"]).equals(one.get(["doc-3", "nope", "doc-77"]))
        with pytest.raises(ValueError, match="binary"):
            sc.search(queries(), mode="funnel")
        sc.close()
        one.close()


def _pid(handle):
    return ray.get(handle.pid.remote())


def test_writer_killed_mid_add_commits_nothing(pair):
    sc, one = pair
    v, n = sc.version, sc.count()
    x, _, meta = rows(64, 123, 0)
    ids = np.arange(90000, 90064)
    assert len(set(routing.shard_of(pa.array(ids), 4).tolist())) == 4
    victim = _pid(sc._writer_handles()[2])
    original = sc._commit_shards

    def kill_then_commit(txn, shards):  # every shard prepared; shard 2's writer dies now
        os.kill(victim, signal.SIGKILL)
        return original(txn, shards)

    sc._commit_shards = kill_then_commit
    try:
        with pytest.raises(ShardUnavailableError, match="shard 2.*not committed"):
            sc.add(x, ids=ids, metadata=meta)
    finally:
        del sc._commit_shards
    assert sc.version == v and sc.count() == n and sc.get(ids).num_rows == 0
    with ShardedCollection.open(sc.path, read_only=True) as r:
        assert r.get(ids).num_rows == 0 and r.count() == n
    # the other shards had committed their part: each was restored to its recorded version
    for path, sv in zip(sc.shard_paths, sc.shard_versions):
        with nv.open(path, read_only=True) as c:
            assert c.get(ids).num_rows == 0 and c.versions()[-1]["op"] in ("restore", "merge", "compact",
                                                                             "import", "delete", "create")
    assert _pid(sc._writer_handles()[2]) != victim  # restarted
    sc.add(x, ids=ids, metadata=meta)  # and the same batch goes through now
    one.add(x, ids=ids, metadata=meta)
    same(sc, one, mode="flat", k=10)
    # a writer dead before the call: it fails in prepare, nothing is written
    os.kill(_pid(sc._writer_handles()[0]), signal.SIGKILL)
    with pytest.raises(ShardUnavailableError, match="shard 0"):
        sc.delete(filter="g >= 0")
    assert sc.count() == one.count()


DRIVER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, ray
    from nestvec.distributed import ShardedCollection
    root, address, mode, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ray.init(address=address, logging_level="ERROR")
    sc = ShardedCollection.open(root)
    M, D = 64, {D}
    def batch(i):
        return np.random.default_rng(1000 + i).standard_normal((M, D)), np.arange(i * M, (i + 1) * M)
    if mode == "die_before_cluster_commit":
        def die(m):
            os.kill(os.getpid(), signal.SIGKILL)
        sc._root.commit = die
    print("ready", flush=True)
    i = start
    while True:
        sc.add(*batch(i))
        print(i, flush=True)  # acknowledged
        i += 1
""").replace("{D}", str(D))


def run_driver(root, mode, start, kill_after=None):
    """A driver in its own process on this Ray cluster; returns its acknowledged batches."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-c", DRIVER, str(root), ray.get_runtime_context().gcs_address, mode,
                          str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    acked = []
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for line in p.stdout:
            acked.append(int(line))
            if kill_after is not None and len(acked) >= kill_after:
                break
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
    return acked


def check_batches(root, acked, M=64):
    """Reopen for writing (the repair) and check: every acknowledged batch whole, no
    batch partial."""
    with ShardedCollection.open(root) as sc:
        ids = np.asarray(sc.to_table(columns=["id"]).column("id").to_pylist(), np.int64)
        present = np.bincount(ids // M) if len(ids) else np.zeros(0, int)
        assert set(present.tolist()) <= {0, M}, "a partial batch is visible"
        for i in acked:
            assert i < len(present) and present[i] == M, f"acknowledged batch {i} lost"
        with ShardedCollection.open(root, read_only=True) as r:
            assert r.count() == len(ids)
        return sorted(np.flatnonzero(present == M).tolist()), sc.version


def test_driver_killed_before_its_cluster_commit(session, tmp_path):
    root = tmp_path / "d"
    ShardedCollection.create(root, shards=3, dim=D).close()
    acked = run_driver(root, "die_before_cluster_commit", 0)  # shards commit, then the driver dies
    assert acked == []
    done, _ = check_batches(root, acked)
    assert done == []
    acked = run_driver(root, "loop", 0, kill_after=2)  # the repaired collection takes writes again
    done, _ = check_batches(root, acked)
    assert done[:2] == [0, 1]


@pytest.mark.slow
def test_driver_killed_at_random_moments(session, tmp_path):
    root = tmp_path / "r"
    ShardedCollection.create(root, shards=4, dim=D).close()
    rng = np.random.default_rng(7)
    start = 0
    for trial in range(6):
        acked = run_driver(root, "loop", start, kill_after=int(rng.integers(1, 4)))
        done, _ = check_batches(root, acked)
        start = (max(done) + 1) if done else 0


def test_killed_reader_is_restarted_or_a_clear_error(pair):
    sc, one = pair
    want = one.search(queries(), k=10, mode="flat")
    assert sc.search(queries(), k=10, mode="flat").equals(want)
    pids = sc.reader_pids()
    os.kill(pids[1], signal.SIGKILL)
    assert sc.search(queries(), k=10, mode="flat").equals(want)  # restarted, the call retried
    assert sc.reader_pids()[1] != pids[1]
    with ShardedCollection.open(sc.path, read_only=True, reader_options={"max_restarts": 0}) as r:
        assert r.search(queries(), k=10, mode="flat").equals(want)
        os.kill(r.reader_pids()[3], signal.SIGKILL)
        with pytest.raises(ShardUnavailableError, match=r"shards? (\d, )*3\b"):
            r.search(queries(), k=10, mode="flat")
    with ShardedCollection.open(sc.path, read_only=True, readers=2, reader_options={"max_restarts": 0}) as r:
        r.search(queries(), k=10)
        os.kill(ray.get(r._reader_handles()[0][0].pid.remote()), signal.SIGKILL)
        for _ in range(2):  # the other replica answers
            assert r.search(queries(), k=10, mode="flat").equals(want)
