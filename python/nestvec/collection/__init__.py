"""Arrow-backed persistent collections (see docs/ARCHITECTURE.md)."""
from .bulk import StagedSegment, discard_segments, write_segment
from .collection import Collection, open  # noqa: A004
from .embedding import Embedding
from .errors import CollectionNotFound, CorruptionError, FilterLimitError, LockError
from .filters import field
from .merge import MergePolicy, NoMergePolicy, SegmentStats, TieredMergePolicy
from .planner import DeviceCache
from .sql import set_sql_limits, sql_limits

__all__ = ["Collection", "open", "field", "Embedding", "LockError", "CollectionNotFound", "CorruptionError",
           "FilterLimitError", "DeviceCache", "MergePolicy", "NoMergePolicy", "TieredMergePolicy", "SegmentStats",
           "set_sql_limits", "sql_limits", "StagedSegment", "write_segment", "discard_segments"]
