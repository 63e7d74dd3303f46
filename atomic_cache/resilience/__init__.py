"""What keeps a Valkey failure from reaching a caller: one error classification
(``errors``), the circuit breaker, bounded logging, the queue of missed invalidations
(``pending``) and the guard that applies them all to a cache source."""
