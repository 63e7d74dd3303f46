"""valkey_client_options: what :func:`create_valkey_client` needs to reach the Valkey that
a Backend.AI ``ValkeyTarget`` describes.

Backend.AI (``ai.backend.common.types.ValkeyTarget``, a dataclass) describes each of its
Valkey connections with ``addr`` (``"host:port"``), ``sentinel`` (a list of
``"host:port"``), ``service_name``, ``password``, ``sentinel_password``,
``request_timeout`` (milliseconds), ``use_tls`` and ``tls_skip_verify``; the database
number is not part of it (each Backend.AI client passes its own). Nothing here imports
Backend.AI: any object with those attributes, or a mapping with those keys (its TOML
spelling with hyphens too: ``service-name``, ``request-timeout``...), will do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from glide import GlideClient

from .client import DEFAULT_REQUEST_TIMEOUT_MS, create_valkey_client, redact_url
from .sentinel import SentinelClient

_FIELDS = (
    "addr",
    "sentinel",
    "service_name",
    "password",
    "sentinel_password",
    "request_timeout",
    "use_tls",
    "tls_skip_verify",
    "username",
)


@dataclass(frozen=True, slots=True)
class ValkeyClientOptions:
    """A URL and the keyword arguments of :func:`create_valkey_client` for it.

    ``kwargs`` holds ``request_timeout_ms`` always, ``tls_insecure`` only when true, and
    ``sentinel_service`` (with ``sentinel_password`` when the target names one) only for
    Sentinel. The repr hides the passwords.
    """

    url: str
    request_timeout_ms: int
    tls_insecure: bool = False
    sentinel_service: str | None = None
    sentinel_password: str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``create_valkey_client(url, **kwargs)`` (see the
        class's docstring for which are present)."""
        options: dict[str, Any] = {"request_timeout_ms": self.request_timeout_ms}
        if self.tls_insecure:
            options["tls_insecure"] = True
        if self.sentinel_service is not None:
            options["sentinel_service"] = self.sentinel_service
            if self.sentinel_password is not None:
                options["sentinel_password"] = self.sentinel_password
        return options

    async def connect(self) -> GlideClient | SentinelClient:
        """``create_valkey_client(self.url, **self.kwargs)``: a client, connected lazily
        (a ``SentinelClient`` for a target with Sentinels)."""
        client: GlideClient | SentinelClient = await create_valkey_client(self.url, **self.kwargs)
        return client

    def __repr__(self) -> str:
        shown = {**self.kwargs}
        if "sentinel_password" in shown:
            shown["sentinel_password"] = "***"
        options = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"ValkeyClientOptions({redact_url(self.url)!r}, {options})"


def valkey_client_options(
    target: object, *, db: int = 0, request_timeout_ms: int | None = None
) -> ValkeyClientOptions:
    """The URL and options of :func:`create_valkey_client` for a Backend.AI
    ``ValkeyTarget`` (an object with its attributes, or a mapping), on database ``db``.

    - ``addr`` ``"host:port"`` (``"[::1]:6379"`` for IPv6; an object with ``host`` and
      ``port``, as Backend.AI's ``HostPortPair``, works too) becomes
      ``valkey://host:port/db``.
    - ``sentinel`` (a list of ``"host:port"``, or one comma-separated string) wins over
      ``addr``, as in Backend.AI: the URL lists the Sentinels,
      ``valkey://:password@s1:26379,s2:26379/db``, and ``service_name`` becomes
      ``sentinel_service``; ``sentinel_password`` is passed when set (None: the Sentinels
      take the data node's password, Backend.AI's fallback too).
    - ``password`` (and ``username``, which Backend.AI does not have: it authenticates
      as the default user) is percent-encoded into the URL; an empty password is none,
      as in Backend.AI.
    - ``use_tls`` makes the scheme ``valkeys://``; ``tls_skip_verify`` becomes
      ``tls_insecure=True`` with TLS and is ignored without it (Backend.AI's own example
      config sets it on plain connections).
    - ``request_timeout`` is in milliseconds in Backend.AI and is passed unchanged as
      ``request_timeout_ms``. Unset (None or 0) it is this package's
      ``DEFAULT_REQUEST_TIMEOUT_MS`` (250 ms), not the 1,000 ms Backend.AI's clients fall
      back to: every read in flight when Valkey stalls waits that long before it falls
      through to PostgreSQL (and three such failures open the breaker). Backend.AI's
      example configs set 1,000-5,000 ms for its other clients; ``request_timeout_ms``
      here, when given, wins over the target's, to give the cache a bound of its own.

    ValueError, in one line that never shows a password: neither ``addr`` nor
    ``sentinel``, ``sentinel`` without ``service_name``, an address that is not
    ``host:port`` with a port from 1 to 65535, a timeout that is not a positive integer,
    a flag that is not a bool, a negative ``db``.
    """
    get = _reader(target)
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        raise ValueError(f"db must be a non-negative integer, not {db!r}")
    use_tls = _flag(get("use_tls"), "use_tls")
    skip_verify = _flag(get("tls_skip_verify"), "tls_skip_verify")
    sentinels = _sentinels(get("sentinel"))
    addr = get("addr")
    if sentinels:
        named = get("service_name")
        if not isinstance(named, str) or not named.strip():
            raise ValueError("a ValkeyTarget with sentinel needs service_name (the monitored name)")
        service: str | None = named
        hosts = [_host_port(entry, "sentinel") for entry in sentinels]
    elif addr is None or addr == "":
        raise ValueError("a ValkeyTarget needs addr ('host:port') or sentinel (['host:port', ...])")
    else:
        service = None
        hosts = [_host_port(addr, "addr")]
    password = _secret(get("password"), "password")
    username = _secret(get("username"), "username")
    sentinel_password = (
        _secret(get("sentinel_password"), "sentinel_password", empty_is_none=False)
        if sentinels
        else None
    )
    if username is not None and password is None:
        raise ValueError("a username needs a password (Valkey authenticates the pair)")
    credentials = ""
    if password is not None:
        credentials = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    scheme = "valkeys" if use_tls else "valkey"
    return ValkeyClientOptions(
        url=f"{scheme}://{credentials}{','.join(hosts)}/{db}",
        request_timeout_ms=_timeout(
            get("request_timeout") if request_timeout_ms is None else request_timeout_ms
        ),
        tls_insecure=use_tls and skip_verify,
        sentinel_service=service,
        sentinel_password=sentinel_password,
    )


def _reader(target: object) -> Callable[[str], object]:
    if isinstance(target, Mapping):

        def get_key(name: str) -> object:
            for key in (name, name.replace("_", "-")):
                if key in target:
                    return target[key]
            return None

        return get_key
    if target is None or isinstance(target, str | bytes):
        raise ValueError(
            f"expected a ValkeyTarget (or a mapping of its fields), not {type(target).__name__}"
        )
    if not any(hasattr(target, name) for name in _FIELDS):
        raise ValueError(
            f"{type(target).__name__} has none of a ValkeyTarget's fields"
            " (addr, sentinel, service_name, password, ...)"
        )
    return lambda name: getattr(target, name, None)


def _flag(value: object, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return value


def _secret(value: object, name: str, *, empty_is_none: bool = True) -> str | None:
    if value is None or (empty_is_none and value == ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    return value


def _timeout(value: object) -> int:
    if value is None or value == 0:
        return DEFAULT_REQUEST_TIMEOUT_MS
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"request_timeout is a whole number of milliseconds (Backend.AI's unit), not {value!r}"
        )
    return value


def _sentinels(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in (piece.strip() for piece in value.split(",")) if part]
    if isinstance(value, Sequence):
        return list(value)
    raise ValueError(f"sentinel must be a list of 'host:port', not {type(value).__name__}")


def _host_port(value: object, what: str) -> str:
    """``value`` as it goes in the URL's host list: ``host:port``, ``[v6]:port``."""
    host: object
    port: object
    if isinstance(value, str):
        text = value.strip()
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"{what} {value!r} is not 'host:port'")
    elif hasattr(value, "host") and hasattr(value, "port"):
        host, port = value.host, value.port
        text = f"{host}:{port}"
    else:
        raise ValueError(f"{what} {value!r} is not 'host:port'")
    if not isinstance(host, str):
        host = str(host)  # an ipaddress object
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            bare = str(ipaddress.IPv6Address(bare))
        except ValueError:
            raise ValueError(f"{what} {text!r} is not 'host:port'") from None
    if not bare or any(c.isspace() or c in "/@?#,[]%" for c in bare):
        raise ValueError(f"{what} {text!r} is not 'host:port'")
    number = port if isinstance(port, int) and not isinstance(port, bool) else None
    if isinstance(port, str) and port.isdigit():
        number = int(port)
    if number is None or not 1 <= number <= 65535:
        raise ValueError(f"{what} {text!r} has no port from 1 to 65535")
    return f"[{bare}]:{number}" if ":" in bare else f"{bare}:{number}"
