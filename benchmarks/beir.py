"""Minimal BEIR-format loader (corpus.jsonl, queries.jsonl, qrels/test.tsv) and the
retrieval metrics the quality benchmark reports (nDCG@k with graded gains, recall@k),
matching trec_eval / BEIR definitions."""
from __future__ import annotations

import glob
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def default_dirs() -> list[str]:
    """<repo>/../shared/data/beir-*-subset (the project's evaluation data, never copied)."""
    return sorted(glob.glob(str(REPO.parent / "shared" / "data" / "beir-*-subset")))


def load(path, split: str = "test", max_docs: int | None = None):
    """(doc_ids, doc_texts, query_ids, query_texts, qrels{qid: {docid: grade}}).

    Documents are "title text" (BEIR convention); only queries with judgments are
    kept. ``max_docs`` keeps every judged document plus the first others up to the cap."""
    p = Path(path)
    for f in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (p / f).is_file():
            raise FileNotFoundError(f"{p}: not a BEIR folder (missing {f})")
    qrels: dict[str, dict[str, int]] = {}
    with open(p / "qrels" / f"{split}.tsv") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            try:
                grade = int(float(parts[2]))
            except ValueError:  # header line
                continue
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    judged = {d for r in qrels.values() for d in r}
    doc_ids, docs = [], []
    with open(p / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            if max_docs is not None and len(doc_ids) >= max_docs and d["_id"] not in judged:
                continue
            title = d.get("title") or ""
            doc_ids.append(str(d["_id"]))
            docs.append((title + " " + d.get("text", "")).strip() if title else d.get("text", ""))
    qids, queries = [], []
    with open(p / "queries.jsonl") as f:
        for line in f:
            q = json.loads(line)
            if str(q["_id"]) in qrels:
                qids.append(str(q["_id"]))
                queries.append(q["text"])
    return doc_ids, docs, qids, queries, qrels


def ndcg_at(ranked: list[str], rels: dict[str, int], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in rels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], rels: dict[str, int], k: int) -> float:
    pos = {d for d, g in rels.items() if g > 0}
    return len(pos.intersection(ranked[:k])) / len(pos) if pos else 0.0


def evaluate(run: dict[str, list[str]], qrels, k_ndcg: int = 10, k_recall: int = 100) -> dict:
    qs = [q for q in run if q in qrels]
    return {f"ndcg@{k_ndcg}": sum(ndcg_at(run[q], qrels[q], k_ndcg) for q in qs) / len(qs),
            f"recall@{k_recall}": sum(recall_at(run[q], qrels[q], k_recall) for q in qs) / len(qs)}
