"""Fault injection: damaged, truncated and tampered files of every kind (segments,
deletion files, manifests, LATEST) never crash the process and never return wrong
rows: every case is a CorruptionError naming the file, at once (no retries), or
(damage to vector bytes, which reads cannot see) results made of genuine rows that
``verify()`` reports. Random byte flips run in a child process (a crash would kill
it, not pytest): a few trials by default, >= 100 in the slow suite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pytest

import nestvec as nv
from nestvec.collection import manifest as mf
from nestvec.collection.merge import NoMergePolicy

D = 16
N_BATCH, BATCHES = 20, 3
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "python")


def truth():
    """id -> (lang, year) of every row ever added."""
    ids = np.arange(N_BATCH * BATCHES)
    return {int(i): ("x" * (int(i) % 7) + f"lang{int(i) % 5}", 1990 + int(i) % 30) for i in ids}


def make(path, dtype="float16"):
    col = nv.Collection.create(path, dim=D, dtype=dtype, schema={"lang": "string", "year": "int32"},
                               merge_policy=NoMergePolicy())
    t = truth()
    rng = np.random.default_rng(0)
    for b in range(BATCHES):
        ids = np.arange(b * N_BATCH, (b + 1) * N_BATCH)
        col.add(rng.standard_normal((N_BATCH, D)), ids=ids,
                metadata={"lang": [t[int(i)][0] for i in ids], "year": [t[int(i)][1] for i in ids]})
    col.delete(ids=[3, 25])
    col.delete(ids=[4, 47])
    col.close()


def reads(col):
    """Everything a reader does, as plain Python values."""
    q = np.random.default_rng(7).standard_normal((2, D))
    out = {"count": col.count()}
    for mode in ("flat", "funnel", "binary"):
        r = col.search(q, k=8, mode=mode, columns=["lang", "year"])
        out[mode] = r.to_pydict()
    out["get"] = col.get([1, 2, 25, 30, 59], columns=["lang", "year"]).to_pydict()
    out["table"] = col.to_table(columns=["id", "lang", "year"]).to_pydict()
    out["filtered"] = col.to_table(columns=["id", "lang"], filter=nv.field("year") >= 2005).to_pydict()
    return out


def genuine(out, t) -> list:
    """Rows whose (id, lang, year) is not a row that was added."""
    bad = []
    for key in ("flat", "funnel", "binary", "get", "table"):
        d = out[key]
        for i, lang, year in zip(d["id"], d["lang"], d["year"]):
            if t.get(i) != (lang, year):
                bad.append((key, i, lang, year))
    return bad


def files(path, sub):
    return sorted(os.path.join(path, sub, f) for f in os.listdir(os.path.join(path, sub)))


def latest_manifest(path):
    v = int(open(os.path.join(path, "LATEST")).read())
    return os.path.join(path, "manifests", f"{v}.json")


def tamper(path, fn):
    """Rewrite the latest manifest through ``fn`` with a *valid* checksum: a forger who
    knows the format; only the other checks can catch it."""
    p = latest_manifest(path)
    m = json.load(open(p))
    m.pop("_summary")
    m = fn(m) or m
    open(p, "wb").write(mf.encode(m))


def flip(path, offset, xor=0x5A):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= xor
    open(path, "wb").write(bytes(data))


@pytest.fixture
def pristine(tmp_path):
    p = str(tmp_path / "c")
    make(p)
    return p


def expect_corrupt(fn, path_part):
    t0 = time.perf_counter()
    with pytest.raises(nv.CorruptionError) as e:
        fn()
    assert time.perf_counter() - t0 < 1.0  # at once, no retry loop
    assert path_part in str(e.value), (path_part, str(e.value))
    return e.value


# --------------------------------------------------------------------------- every kind of file


@pytest.mark.parametrize("kind", ["segments", "deletions", "manifests"])
def test_truncated_files(pristine, kind):
    m = json.load(open(latest_manifest(pristine)))
    if kind == "manifests":
        victim = latest_manifest(pristine)
    elif kind == "segments":
        victim = os.path.join(pristine, "segments", m["segments"][1]["name"])
    else:
        victim = os.path.join(pristine, "deletions", m["segments"][0]["deletions"])
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[:len(data) // 2])
    expect_corrupt(lambda: nv.open(pristine, read_only=True), os.path.basename(victim))


def test_missing_file_is_corruption_not_a_retry(pristine):
    m = json.load(open(latest_manifest(pristine)))
    os.unlink(os.path.join(pristine, "segments", m["segments"][2]["name"]))
    expect_corrupt(lambda: nv.open(pristine, read_only=True), m["segments"][2]["name"])
    os.unlink(latest_manifest(pristine))
    expect_corrupt(lambda: nv.open(pristine, read_only=True), "manifests")


@pytest.mark.parametrize("content", [b"", b"x\n", b"-1\n", b"12 34\n", b"9" * 30])
def test_latest_garbage(pristine, content):
    open(os.path.join(pristine, "LATEST"), "wb").write(content)
    expect_corrupt(lambda: nv.open(pristine, read_only=True), "LATEST" if content.strip().isdigit() is False
                   or len(content) > 20 else "")


def test_manifest_byte_flip_and_rewrite(pristine):
    p = latest_manifest(pristine)
    good = open(p, "rb").read()
    flip(p, len(good) // 2, 0x01)
    expect_corrupt(lambda: nv.open(pristine, read_only=True), os.path.basename(p))
    m = json.loads(good)  # rewritten by a tool that does not know the checksum
    m["rows"] = 3
    open(p, "w").write(json.dumps(m))
    expect_corrupt(lambda: nv.open(pristine, read_only=True), os.path.basename(p))


BAD_MANIFESTS = {
    "json list": lambda m: [],
    "no segments": lambda m: m.pop("segments") and None,
    "no dtype": lambda m: m.pop("dtype") and None,
    "dim string": lambda m: m.update(dim="16"),
    "rows wrong": lambda m: m.update(rows=m["rows"] + 1),
    "deleted wrong": lambda m: m["segments"][0].update(deleted=1),
    "first_row wrong": lambda m: m["segments"][1].update(first_row=21),
    "segments reordered": lambda m: m.update(segments=m["segments"][::-1]),
    "segment listed twice": lambda m: m["segments"].append(dict(m["segments"][2], first_row=10**6,
                                                                last_row=10**6 + 19)),
    "traversal": lambda m: m["segments"][0].update(name="../../outside/" + m["segments"][0]["name"]),
    "absolute": lambda m: m["segments"][0].update(name="/etc/passwd"),
    "deletion traversal": lambda m: m["segments"][0].update(deletions="../../x.1.arrow"),
    "deletion of another segment": lambda m: m["segments"][0].update(
        deletions=m["segments"][1]["deletions"] or m["segments"][2]["deletions"]),
    "bytes wrong": lambda m: m["segments"][1].update(bytes=m["segments"][1]["bytes"] + 8),
    "dtype over float32 data": lambda m: m.update(dtype="float32"),
    "binary off": lambda m: m.update(binary=False),
    "format from the future": lambda m: m.update(format="nestvec-collection/99"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_tampered_manifest_fields(pristine, case):
    if case == "json list":
        open(latest_manifest(pristine), "w").write("[]")
    else:
        tamper(pristine, BAD_MANIFESTS[case])
    if case == "format from the future":
        with pytest.raises(ValueError, match="newer"):
            nv.open(pristine, read_only=True)
        return
    err = expect_corrupt(lambda: nv.open(pristine, read_only=True), "")
    assert err.path is not None and os.path.abspath(err.path).startswith(os.path.abspath(pristine))


def test_tampered_paths_never_leave_the_directory(tmp_path):
    """r13 (c): a segment moved outside and named by '../../' is not followed, and no
    delete can write outside (the open fails first)."""
    base = tmp_path / "base"
    p = str(base / "c")
    make(p)
    outside = base / "outside"
    outside.mkdir()
    m = json.load(open(latest_manifest(p)))
    seg = m["segments"][0]["name"]
    shutil.move(os.path.join(p, "segments", seg), outside / seg)
    tamper(p, lambda m: m["segments"][0].update(name="../../outside/" + seg))
    expect_corrupt(lambda: nv.open(p), "name")
    assert sorted(os.listdir(outside)) == [seg]
    # a valid name that is a symbolic link to a file outside: refused as well
    tamper(p, lambda m: m["segments"][0].update(name=seg))
    os.symlink(outside / seg, os.path.join(p, "segments", seg))
    expect_corrupt(lambda: nv.open(p), seg)


def _rewrite_deletions(path, seg_index, rows):
    """Replace a segment's deletion file (rows of our choosing) and record it in the
    manifest with valid size and checksum: only the row checks can catch it."""
    m = json.load(open(latest_manifest(path)))
    name = m["segments"][seg_index]["deletions"]
    dpath = os.path.join(path, "deletions", name)
    with pa.OSFile(dpath, "wb") as sink:
        with pa.ipc.new_file(sink, pa.schema([("_row", pa.int64())])) as w:
            w.write_table(pa.table({"_row": pa.array(rows, pa.int64())}))
    data = open(dpath, "rb").read()
    tamper(path, lambda m: m["segments"][seg_index].update(deletions_bytes=len(data),
                                                           deletions_crc32=mf.crc_hex(data)))


def test_deletion_rows_checked_against_the_segment(tmp_path):
    """r13 (a), (b): rows of another segment, beyond the segment, or absent from it."""
    for i, rows in enumerate([[3], [10**6], [45]]):  # segment 1 deleted [25], segment 2 [47]
        p = str(tmp_path / f"d{i}")
        make(p)
        _rewrite_deletions(p, 1 if i < 2 else 2, rows)  # segment 1 holds rows 20..39, 2: 40..59
        if i < 2:
            expect_corrupt(lambda: nv.open(p, read_only=True), "deletions")
        else:  # the right count and range, and a row the segment holds: a valid deletion file
            c = nv.open(p, read_only=True)
            live = c.to_table().column("id").to_pylist()
            assert 45 not in live and 47 in live and c.count() == 56
    # a compacted segment has gaps in _row: a deleted row inside the range but absent
    p = str(tmp_path / "gap")
    make(p)
    c = nv.open(p)
    c.compact()
    c.delete(ids=[10])
    c.close()
    _rewrite_deletions(p, 0, [3])  # row 3 was deleted before the compaction: not in the segment
    c = nv.open(p, read_only=True)  # range checks pass at open; the live mask checks membership
    expect_corrupt(lambda: c.search(np.ones(D), k=3), "deletions")


def test_damaged_string_offsets_never_crash(pristine):
    """r12: a changed string offset would send a read outside the map (SIGBUS); it is
    found before the column is read. Run in a child: a crash must not take pytest."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {HERE!r})
        import numpy as np, nestvec as nv, json, os
        from test_corruption import latest_manifest
        p = {pristine!r}
        m = json.load(open(latest_manifest(p)))
        seg = os.path.join(p, "segments", m["segments"][0]["name"])
        data = bytearray(open(seg, "rb").read())
        i = data.find(np.array([0, 5, 11], np.int32).tobytes())  # offsets of 'lang0', 'xlang1'
        assert i >= 0
        data[i + 8:i + 12] = np.array([1 << 30], np.int32).tobytes()
        open(seg, "wb").write(bytes(data))
        c = nv.open(p, read_only=True)
        for step in (lambda: c.search(np.ones({D}), k=3, columns=["lang"]), lambda: c.to_table(),
                     lambda: c.get([1, 2]), lambda: c.count(filter=nv.field("lang") == "a")):
            try:
                step()
                print("no error")
            except nv.CorruptionError as e:
                print("CorruptionError", "column 'lang'" in str(e) and m["segments"][0]["name"] in str(e))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["CorruptionError True"] * 4, r.stdout


def test_damaged_vectors_found_by_verify(pristine):
    before = reads(nv.open(pristine, read_only=True))
    m = json.load(open(latest_manifest(pristine)))
    seg = os.path.join(pristine, "segments", m["segments"][1]["name"])
    c = nv.open(pristine, read_only=True)
    vec = c._snap.segments[1].vectors
    # the byte of row 5's first value, located through the map of the file
    base = c._snap.segments[1].file.table.column("_row").chunk(0).buffers()[1].address
    off = vec.__array_interface__["data"][0] + 5 * vec.strides[0] - base
    c.close()
    first_row = open(seg, "rb").read().find(np.arange(20, 40, dtype=np.int64).tobytes())
    flip(seg, first_row + off + 1, 0x40)
    c = nv.open(pristine, read_only=True)  # vectors are not read at open
    after = reads(c)
    assert not genuine(after, truth()) and after["count"] == before["count"]
    err = expect_corrupt(c.verify, m["segments"][1]["name"])
    assert "checksum" in str(err)
    expect_corrupt(lambda: nv.open(pristine, read_only=True, verify=True), m["segments"][1]["name"])
    w = nv.open(pristine)  # a merge verifies its inputs: damage is never copied into a new file
    expect_corrupt(w.compact, m["segments"][1]["name"])


def test_verify_report_and_format_1(pristine):
    c = nv.open(pristine, read_only=True)
    rep = c.verify()
    assert rep["files"] == 6 and rep["not_checksummed"] == [] and rep["bytes"] > 0
    c.close()
    # a format-1 collection: no checksums anywhere; it opens, verify() says what it could not check
    v = int(open(os.path.join(pristine, "LATEST")).read())
    m = json.load(open(latest_manifest(pristine)))
    m.pop("_summary")
    m.pop("crc_block")
    m["format"] = "nestvec-collection/1"
    for s in m["segments"]:
        for k in ("bytes", "crc32", "columns", "deletions_bytes", "deletions_crc32"):
            s.pop(k)
    open(latest_manifest(pristine), "w").write(json.dumps(m, indent=1, sort_keys=True))
    c = nv.open(pristine)
    assert c.count() == 56 and len(c.verify()["not_checksummed"]) == 6
    c.add(np.ones((2, D)), ids=[100, 101])  # the next commit writes format 2
    assert json.load(open(latest_manifest(pristine)))["format"] == "nestvec-collection/2"
    assert len(c.verify()["not_checksummed"]) == 6
    c.compact()
    assert c.verify()["not_checksummed"] == [] and c.count() == 58 and c.version == v + 2


# --------------------------------------------------------------------------- random byte flips

FUZZ = textwrap.dedent("""
    import json, os, random, shutil, sys
    sys.path.insert(0, sys.argv[4])
    import numpy as np, nestvec as nv
    from test_corruption import genuine, reads, truth
    src, work, trials, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[5])
    t = truth()
    want = {}
    for v in range(int(open(os.path.join(src, "LATEST")).read()) + 1):
        with nv.open(src, version=v) as c:
            want[v] = reads(c)
    rng = random.Random(seed)
    stats = {"trials": 0, "at_open": 0, "on_read": 0, "by_verify": 0, "no_effect": 0}
    names = sorted(os.path.relpath(os.path.join(r, f), src) for r, _, fs in os.walk(src) for f in fs
                   if f != "LOCK")
    for trial in range(trials):
        print("trial", trial, flush=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        name = rng.choice(names)
        p = os.path.join(work, name)
        data = bytearray(open(p, "rb").read())
        off = rng.randrange(len(data))
        data[off] ^= rng.randrange(1, 256)
        open(p, "wb").write(bytes(data))
        stats["trials"] += 1
        try:
            c = nv.open(work, read_only=True)
        except nv.CorruptionError:
            stats["at_open"] += 1
            continue
        try:
            got = reads(c)
        except nv.CorruptionError:
            stats["on_read"] += 1
            continue
        bad = genuine(got, t)
        assert not bad, (name, off, bad[:3])
        try:
            c.verify()
        except nv.CorruptionError:
            stats["by_verify"] += 1  # vector / code / padding bytes: genuine rows, damage reported
            continue
        assert got == want[c.version], (name, off, "verify() passed but the results changed")
        stats["no_effect"] += 1  # a file this version does not use (an older manifest, deletion file)
    print(json.dumps(stats), flush=True)
""")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fuzz(tmp_path, trials, seed):
    src, work = str(tmp_path / "src"), str(tmp_path / "work")
    make(src)
    r = subprocess.run([sys.executable, "-c", FUZZ, src, work, str(trials), HERE, str(seed)],
                       capture_output=True, text=True, timeout=60 + 3 * trials, env=_env())
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, f"child died (rc {r.returncode}) at {last}: {r.stderr[-3000:]}"
    stats = json.loads(last)
    assert stats["trials"] == trials
    return stats


def test_random_byte_flips_a_few(tmp_path):
    fuzz(tmp_path, trials=6, seed=1)


@pytest.mark.slow
def test_random_byte_flips_many(tmp_path):
    stats = fuzz(tmp_path, trials=300, seed=2)
    assert stats["at_open"] + stats["on_read"] + stats["by_verify"] > 100, stats
