"""What differs between the valkey-glide releases this package supports (2.3.1, which
Backend.AI pins, and later): features of later releases are used when present.

- glide 2.6 added a client-wide circuit breaker (``ClientCircuitBreakerConfiguration``,
  ``CircuitBreakerError``). On older releases nothing raises ``CircuitBreakerError`` (a
  stand-in class here, so that ``except`` and ``isinstance`` work alike), and asking
  ``create_valkey_client`` for glide's breaker raises ValueError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import glide

if TYPE_CHECKING:
    from glide import CircuitBreakerError as CircuitBreakerError
else:
    CircuitBreakerError = getattr(glide, "CircuitBreakerError", None)
    if CircuitBreakerError is None:

        class CircuitBreakerError(Exception):
            """Stands for glide's (2.6+), which this glide never raises."""


HAS_CLIENT_CIRCUIT_BREAKER = hasattr(glide, "ClientCircuitBreakerConfiguration")
GLIDE_VERSION = getattr(glide, "__version__", None)


def breaker_option(config: object | None) -> dict[str, Any]:
    """The configuration keyword for glide's client-wide breaker: none when not asked."""
    if config is None:
        return {}
    if not HAS_CLIENT_CIRCUIT_BREAKER:
        raise ValueError("client_circuit_breaker needs valkey-glide 2.6 or later")
    return {"client_circuit_breaker": config}
