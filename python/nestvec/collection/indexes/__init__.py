"""Sub-linear search: per-segment indexes over a collection (docs/ARCHITECTURE.md,
"Indexes").

* ``spec.py``: what a manifest records about an index, and its checks (no heavy imports).
* ``ivf.py``: centroids trained once per collection (``faiss.Kmeans``), per-segment
  list files (rows grouped by list, their binary codes), the probe.
* ``hnsw.py``: an hnswlib graph over a prefix of each large segment.
* ``files.py``: reading, writing and checking index files.
* ``build.py``: create / drop, and the indexer that keeps new segments indexed.
* ``span.py``: ivf spans, one list file over several segments (one range per probed
  list whatever the segment count).
* ``plan.py``: the ``ivf`` and ``hnsw`` search modes over one snapshot.

Building needs the ``ann`` extra (faiss-cpu, hnswlib); ``import nestvec`` imports
neither, and an ivf index is searched without them.
"""
from .spec import KINDS

__all__ = ["KINDS"]
