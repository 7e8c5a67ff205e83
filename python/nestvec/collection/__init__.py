"""Arrow-backed persistent collections (see docs/ARCHITECTURE.md)."""
from .collection import Collection, open  # noqa: A004
from .errors import CollectionNotFound, CorruptionError, FilterLimitError, LockError
from .filters import field
from .merge import MergePolicy, NoMergePolicy, SegmentStats, TieredMergePolicy
from .planner import DeviceCache
from .sql import set_sql_limits, sql_limits

__all__ = ["Collection", "open", "field", "LockError", "CollectionNotFound", "CorruptionError",
           "FilterLimitError", "DeviceCache", "MergePolicy", "NoMergePolicy", "TieredMergePolicy", "SegmentStats",
           "set_sql_limits", "sql_limits"]
