"""Scale-out on Ray (``pip install 'nestvec[ray]'``): sharded collections served by Ray
actors, and Ray Data ingestion with the Encoder. README, "Scale-out on Ray";
docs/ARCHITECTURE.md, "Sharded collections".

Importing this package does not import Ray; the first read or write does (and
starts Ray locally when no cluster is connected).
"""
from .ingest import ingest
from .runtime import ShardUnavailableError
from .sharded import ShardedCollection


def open(root, version=None, read_only=False, **options) -> ShardedCollection:  # noqa: A001
    """Open a sharded collection (see :meth:`ShardedCollection.open`)."""
    return ShardedCollection.open(root, version=version, read_only=read_only, **options)


__all__ = ["ShardedCollection", "open", "ingest", "ShardUnavailableError"]
