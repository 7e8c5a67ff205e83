"""Exceptions of the collection layer (re-exported by ``nestvec.collection``)."""
from __future__ import annotations


class LockError(RuntimeError):
    """Another process holds the writer lock of a collection."""


class CollectionNotFound(FileNotFoundError):
    """The path is not a collection (no LATEST)."""


class CorruptionError(Exception):
    """A file of a collection is damaged or was tampered with: a checksum, size, name
    or structure does not match what the manifest recorded, or a manifest is invalid.

    ``path`` is the file at fault (absolute, or ``None`` for an in-memory collection);
    ``problems`` lists every finding when :meth:`Collection.verify` found several.
    No retry can fix it: restore the file from a backup, or open an older version
    that does not use it (``nv.open(path, version=...)``).
    """

    def __init__(self, path, reason: str, problems=None):
        self.path = path
        self.reason = reason
        self.problems = list(problems) if problems else [(path, reason)]
        where = f"{path}: " if path else ""
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        super().__init__(f"{where}{reason}{more}")


class FilterLimitError(ValueError):
    """An SQL filter ran past its time or memory limit (see ``set_sql_limits``)."""
