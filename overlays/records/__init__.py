"""Commerce records: the RecordStore interface (base.py) and its backends (sqlite.py, redis.py)."""

from overlays.records.base import RecordStore
from overlays.records.sqlite import SqliteRecords

__all__ = ["RecordStore", "SqliteRecords"]
