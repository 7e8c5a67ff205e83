"""Arrow-backed persistent collections (see DESIGN.md, Collections)."""
from .collection import Collection, open  # noqa: A004
from .filters import field
from .planner import DeviceCache
from .storage import CollectionNotFound, LockError

__all__ = ["Collection", "open", "field", "LockError", "CollectionNotFound", "DeviceCache"]
