"""Where sagas are kept: the storage contract and its SQL and in-memory backends."""

from .base import Change, NewStep, NewWorkflow, QueryFilter, Storage, StorageSession
from .memory import InMemoryStorage
from .schema import migrate
from .sql import SqlStorage

__all__ = ["Storage", "StorageSession", "Change", "NewStep", "NewWorkflow", "QueryFilter",
           "InMemoryStorage", "SqlStorage", "migrate"]
