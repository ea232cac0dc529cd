"""What a PostgreSQL failure means for the caller: the database is unreachable, it is briefly unable to answer, or it
answered and refused what it was sent.

psycopg files very different things under OperationalError: a refused connection, but also a statement timeout
(57014) and an index row over its size limit (54000, "program limit exceeded"). Treating all of them as "unreachable"
let one oversized value look like an outage forever; only the SQLSTATE tells them apart.
"""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout

# Class 08: connection exceptions; 57P01-03: the server is shutting down or starting; 53300: too many connections.
_CONNECTION_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
# Worth retrying the same statement later: resources (53), operator intervention such as a statement timeout (57),
# transaction rollback (40: serialization failure, deadlock) and system errors (58).
_TRANSIENT_CLASSES = ("53", "57", "40", "58")


def is_connection_failure(exc: BaseException) -> bool:
    """PostgreSQL could not be reached, or the connection broke: nothing was refused, nothing was answered."""
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError | OSError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _CONNECTION_STATES
    return False


def is_transient(exc: BaseException) -> bool:
    """Trying the same statement again later may succeed: the connection failed, or the database was busy."""
    if is_connection_failure(exc):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.Error) and state is not None and state.startswith(_TRANSIENT_CLASSES)


def describe(exc: BaseException) -> str:
    """The error's type and SQLSTATE only, for a log line: a driver's message can carry a host name, a user or what a
    record holds."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}, SQLSTATE {state}" if state else type(exc).__name__


class StoreUnavailableError(Exception):
    """PostgreSQL cannot be reached; the message names no host, user or secret."""


class StoreBusyError(StoreUnavailableError):
    """PostgreSQL is up but did not answer in time (a statement timeout, a lock, no room): not an outage."""
