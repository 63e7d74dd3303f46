"""The ``atomic-cache`` command (see ``commands``); ``options`` and ``servers`` hold what
every command shares."""

from __future__ import annotations

from .commands import main
from .servers import database_server, valkey_server

__all__ = ["database_server", "main", "valkey_server"]
