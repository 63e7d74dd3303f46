"""What differs between the valkey-glide releases this package supports (2.3.1, which
Backend.AI pins, and later): features of later releases are used when present.

- glide 2.6 added a client-wide circuit breaker (``ClientCircuitBreakerConfiguration``,
  ``CircuitBreakerError``). On older releases nothing raises ``CircuitBreakerError`` (a
  stand-in class here, so that ``except`` and ``isinstance`` work alike), and asking
  ``create_valkey_client`` for glide's breaker raises ValueError;
  ``ClientCircuitBreakerConfiguration`` is None there (use it where
  ``HAS_CLIENT_CIRCUIT_BREAKER``).
- Type differences between releases are settled here too: the names above come from
  glide for a type checker, and are Any when it checks against a glide without them.
- After a lost connection, glide 2.3 reconnects and subscribes again at once (within a
  millisecond or so, on a server that takes the connection), where 2.6 subscribes again
  only at its next periodic sync, seconds later. Announcements published in between are
  lost either way, but on 2.3 glide's own state (``get_subscriptions``) may never be seen
  without the subscription. So ``LocalCache`` does not rely on it alone: each check also
  asks the server (``CLIENT INFO``) which connection carries the subscription, and one
  other than at its last sync empties the cache, on every glide release.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import glide

if TYPE_CHECKING:
    # glide 2.6's types; type-checked against an older glide, where they are missing,
    # both are Any (hence the ignores, unused on 2.6).
    from glide import (  # type: ignore[attr-defined,unused-ignore]
        CircuitBreakerError as CircuitBreakerError,
    )
    from glide import (  # type: ignore[attr-defined,unused-ignore]
        ClientCircuitBreakerConfiguration as ClientCircuitBreakerConfiguration,
    )
else:
    CircuitBreakerError = getattr(glide, "CircuitBreakerError", None)
    if CircuitBreakerError is None:

        class CircuitBreakerError(Exception):
            """Stands for glide's (2.6+), which this glide never raises."""

    # None before 2.6: use it only where HAS_CLIENT_CIRCUIT_BREAKER.
    ClientCircuitBreakerConfiguration = getattr(glide, "ClientCircuitBreakerConfiguration", None)


HAS_CLIENT_CIRCUIT_BREAKER = hasattr(glide, "ClientCircuitBreakerConfiguration")
GLIDE_VERSION = getattr(glide, "__version__", None)


def breaker_option(config: object | None) -> dict[str, Any]:
    """The configuration keyword for glide's client-wide breaker: none when not asked."""
    if config is None:
        return {}
    if not HAS_CLIENT_CIRCUIT_BREAKER:
        raise ValueError("client_circuit_breaker needs valkey-glide 2.6 or later")
    return {"client_circuit_breaker": config}
