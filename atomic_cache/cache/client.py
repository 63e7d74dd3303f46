"""create_valkey_client: a glide client from a ``valkey://`` / ``redis://`` URL, for a
standalone server, (``cluster=True``) a Valkey Cluster, or (``sentinel_service=...``) the
primary that Sentinels name, followed across failovers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload
from urllib.parse import unquote, urlsplit, urlunsplit

from glide import (
    AdvancedGlideClientConfiguration,
    AdvancedGlideClusterClientConfiguration,
    GlideClient,
    GlideClientConfiguration,
    GlideClusterClient,
    GlideClusterClientConfiguration,
    Logger,
    LogLevel,
    NodeAddress,
    ReadFrom,
    ServerCredentials,
    TlsAdvancedConfiguration,
)

from ..glide_compat import breaker_option
from .sentinel import DEFAULT_SENTINEL_PORT, Address, SentinelClient, Sentinels

if TYPE_CHECKING:  # glide 2.6+; older releases have no client-wide breaker
    from ..glide_compat import ClientCircuitBreakerConfiguration

DEFAULT_REQUEST_TIMEOUT_MS = 250
DEFAULT_CONNECT_TIMEOUT_MS = 500
_PLAIN_SCHEMES = {"valkey", "redis"}
_TLS_SCHEMES = {"valkeys", "rediss"}
_SCHEMES_HINT = "use valkey://, redis://, valkeys:// or rediss:// (valkey://host:port/db)"


def quiet_glide_logs(level: LogLevel | str = "off") -> None:
    """Silence valkey-glide's own log lines, or keep only those at ``level`` and above.

    glide's core writes its log lines itself, coloured, to standard output (a WARN for
    each failed connection attempt, for instance), not through Python's ``logging``, so
    logging's configuration never reaches them. This sets glide's logger, which is one
    for the whole process, to ``level``: ``"off"`` (the default) silences it; ``"error"``
    keeps errors; ``"warn"`` is glide's own default; ``"info"``, ``"debug"``, ``"trace"``
    say more. A ``glide.LogLevel`` works too. Call it once at start-up, before or after
    creating clients: it applies at once to every glide client of the process, on every
    glide release this package supports. What matters to this package it reports itself,
    through its exceptions and the ``atomic_cache`` logger.

    Raises ValueError for a level glide does not have.
    """
    chosen = LogLevel.__members__.get(level.upper()) if isinstance(level, str) else level
    if not isinstance(chosen, LogLevel):
        names = ", ".join(name.lower() for name in LogLevel.__members__)
        raise ValueError(f"unknown glide log level {level!r}: one of {names}")
    Logger.set_logger_config(chosen)


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials = f"{parts.username or ''}:***"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{parts.netloc.rpartition('@')[2]}"))


def _port(url: str) -> int:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or outside 0-65535
        port = -1
    if port is None:
        return 6379
    if not 1 <= port <= 65535:
        raw = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(
            f"bad port {raw!r} in Valkey URL {redact_url(url)!r}: a number from 1 to 65535"
        )
    return port


def tls_config(
    url: ValkeyURL, ca_file: str | os.PathLike[str] | None = None, insecure: bool = False
) -> TlsAdvancedConfiguration | None:
    """glide's TLS settings for ``valkeys://`` / ``rediss://``: the CA bundle to trust
    (``ca_file``, PEM) instead of the system's, or no verification at all (``insecure``,
    Backend.AI's ``tls_skip_verify``). None: the system's trust store. ValueError, before
    any connection, for a plain URL, both at once, or a file that holds no certificate."""
    if ca_file is None and not insecure:
        return None
    if not url.use_tls:
        raise ValueError("tls_ca_file and tls_insecure need a TLS URL: valkeys:// or rediss://")
    if ca_file is not None and insecure:
        raise ValueError("tls_insecure skips verification: pass it or tls_ca_file, not both")
    if insecure:
        return TlsAdvancedConfiguration(use_insecure_tls=True)
    assert ca_file is not None
    try:
        pem = Path(ca_file).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read tls_ca_file {str(ca_file)!r}: {error.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError(f"tls_ca_file {str(ca_file)!r} holds no PEM certificate")
    return TlsAdvancedConfiguration(root_pem_cacerts=pem)


def split_hosts(url: str, default_port: int = DEFAULT_SENTINEL_PORT) -> tuple[list[Address], str]:
    """The hosts of a URL that names several (``valkey://h1:26379,h2:26379/0``), and the
    URL with only the first, for :meth:`ValkeyURL.parse` to check the rest. A host
    without a port gets ``default_port``."""
    if "://" not in url:
        ValkeyURL.parse(url)  # raises, naming the problem
    scheme, rest = url.split("://", 1)
    netloc, slash, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    addresses = []
    for host in hosts.split(","):
        if not host.strip():
            raise ValueError(f"empty host in Valkey URL {redact_url(url)!r}")
        one = ValkeyURL.parse(f"{scheme}://{host.strip()}")
        has_port = host.rstrip().rpartition("]")[2].count(":") == 1
        addresses.append((one.host, one.port if has_port else default_port))
    first = f"{scheme}://{credentials}{at}{hosts.split(',')[0].strip()}{slash}{path}"
    return addresses, first


@dataclass(frozen=True, slots=True)
class ValkeyURL:
    """The parts of a Valkey URL that a client needs."""

    host: str
    port: int
    use_tls: bool
    username: str | None
    password: str | None
    database: int

    @classmethod
    def parse(cls, url: str) -> ValkeyURL:
        """Split ``url``; ValueError, with one line naming what is wrong, if it cannot be
        used (no or an unknown scheme, a bad port or database number). The password is
        never part of the message."""
        if not url.strip():
            raise ValueError(f"empty Valkey URL: {_SCHEMES_HINT}")
        if "://" not in url:
            # "127.0.0.1:6379" or "localhost:6379": urlsplit would read a scheme, or none.
            raise ValueError(f"Valkey URL {redact_url(url)!r} has no scheme: {_SCHEMES_HINT}")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _PLAIN_SCHEMES | _TLS_SCHEMES:
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}: {_SCHEMES_HINT}")
        port = _port(url)
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(
                f"database number {path!r} in Valkey URL {redact_url(url)!r} must be a"
                " non-negative integer"
            )
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            use_tls=scheme in _TLS_SCHEMES,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            database=int(path) if path else 0,
        )

    @property
    def credentials(self) -> ServerCredentials | None:
        if self.password is None:
            return None
        return ServerCredentials(password=self.password, username=self.username)

    def cluster_configuration(
        self,
        *,
        request_timeout_ms: int,
        connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
        client_name: str | None = None,
        read_from_replica: bool = False,
        client_circuit_breaker: ClientCircuitBreakerConfiguration | None = None,
        tls: TlsAdvancedConfiguration | None = None,
    ) -> GlideClusterClientConfiguration:
        """The URL's node is a seed: glide discovers the rest of the cluster from it."""
        if self.database:
            raise ValueError("a Valkey Cluster has only database 0: drop the /db from the URL")
        return GlideClusterClientConfiguration(
            [NodeAddress(self.host, self.port)],
            use_tls=self.use_tls,
            credentials=self.credentials,
            # Replicas serve only the read-only scripts (EVALSHA_RO); writes and
            # invalidations always go to the slot's primary.
            read_from=ReadFrom.PREFER_REPLICA if read_from_replica else ReadFrom.PRIMARY,
            request_timeout=request_timeout_ms,
            client_name=client_name,
            lazy_connect=True,
            advanced_config=AdvancedGlideClusterClientConfiguration(
                connection_timeout=connect_timeout_ms, tls_config=tls
            ),
            **breaker_option(client_circuit_breaker),
        )

    def configuration(
        self,
        *,
        request_timeout_ms: int,
        connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
        client_name: str | None = None,
        client_circuit_breaker: ClientCircuitBreakerConfiguration | None = None,
        tls: TlsAdvancedConfiguration | None = None,
    ) -> GlideClientConfiguration:
        return GlideClientConfiguration(
            [NodeAddress(self.host, self.port)],
            use_tls=self.use_tls,
            credentials=self.credentials,
            request_timeout=request_timeout_ms,
            database_id=self.database or None,
            client_name=client_name,
            # A dead server must never block start-up: connect on the first command.
            lazy_connect=True,
            advanced_config=AdvancedGlideClientConfiguration(
                connection_timeout=connect_timeout_ms, tls_config=tls
            ),
            **breaker_option(client_circuit_breaker),
        )


@overload
async def create_valkey_client(
    url: str,
    *,
    request_timeout_ms: int = ...,
    connect_timeout_ms: int = ...,
    client_name: str | None = ...,
    client_circuit_breaker: ClientCircuitBreakerConfiguration | None = ...,
    cluster: Literal[False] = ...,
    read_from_replica: Literal[False] = ...,
    tls_ca_file: str | os.PathLike[str] | None = ...,
    tls_insecure: bool = ...,
    sentinel_service: None = ...,
    sentinel_password: None = ...,
) -> GlideClient: ...


@overload
async def create_valkey_client(
    url: str,
    *,
    request_timeout_ms: int = ...,
    connect_timeout_ms: int = ...,
    client_name: str | None = ...,
    client_circuit_breaker: ClientCircuitBreakerConfiguration | None = ...,
    cluster: Literal[False] = ...,
    read_from_replica: Literal[False] = ...,
    tls_ca_file: str | os.PathLike[str] | None = ...,
    tls_insecure: bool = ...,
    sentinel_service: str,
    sentinel_password: str | None = ...,
) -> SentinelClient: ...


@overload
async def create_valkey_client(
    url: str,
    *,
    request_timeout_ms: int = ...,
    connect_timeout_ms: int = ...,
    client_name: str | None = ...,
    client_circuit_breaker: ClientCircuitBreakerConfiguration | None = ...,
    cluster: Literal[True],
    read_from_replica: bool = ...,
    tls_ca_file: str | os.PathLike[str] | None = ...,
    tls_insecure: bool = ...,
    sentinel_service: None = ...,
    sentinel_password: None = ...,
) -> GlideClusterClient: ...


async def create_valkey_client(
    url: str,
    *,
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
    client_name: str | None = "atomic_cache",
    client_circuit_breaker: ClientCircuitBreakerConfiguration | None = None,
    cluster: bool = False,
    read_from_replica: bool = False,
    tls_ca_file: str | os.PathLike[str] | None = None,
    tls_insecure: bool = False,
    sentinel_service: str | None = None,
    sentinel_password: str | None = None,
) -> GlideClient | GlideClusterClient | SentinelClient:
    """Create a glide client; it connects lazily, on its first command.

    ``cluster=True``: a Valkey Cluster client; the URL names any node (a seed).
    ``read_from_replica=True`` (cluster only) sends the read-only scripts to replicas;
    the cache source then waits, after each invalidation, until the replicas have it.

    A URL that cannot be used raises ValueError naming the problem (see
    :meth:`ValkeyURL.parse`) before any client exists.

    ``request_timeout_ms`` bounds every command, so a stalled server costs at most that
    much per call (and the breaker of the repositories stops paying it).
    ``client_circuit_breaker`` turns on glide's own client-wide breaker as well, for an
    application that shares this client with other work; the repositories do not need it
    (their breaker also counts BUSY and LOADING) and treat its rejections as an open
    circuit. With glide's defaults it ignores timeouts: pass ``count_timeouts=True``.

    TLS (``valkeys://``, ``rediss://``) verifies the server against the system's trust
    store, or against ``tls_ca_file`` (PEM); ``tls_insecure=True`` verifies nothing. A
    server that fails verification looks like an unreachable one: the first command fails
    after the connect timeout (and reads fall through to the database).

    ``sentinel_service``: the URL's hosts (comma-separated, port 26379 unless given) are
    Sentinels, and the client talks to the primary they name for that service, following
    every failover with no call from the application (see :class:`SentinelClient`). The
    URL's user and password are the data nodes'; ``sentinel_password`` is the Sentinels'
    (by default the URL's, ``""`` for none; Sentinels without a password accept any).
    The Sentinels are
    reached over plain TCP, the data nodes over TLS if the URL says so.
    """
    if request_timeout_ms <= 0 or connect_timeout_ms <= 0:
        raise ValueError("request_timeout_ms and connect_timeout_ms must be positive")
    if sentinel_service is not None:
        if cluster or read_from_replica:
            raise ValueError("sentinel_service is for a primary and its replicas, not a cluster")
        return await sentinel_client(
            url,
            sentinel_service,
            sentinel_password,
            lambda parsed, tls: parsed.configuration(
                request_timeout_ms=request_timeout_ms,
                connect_timeout_ms=connect_timeout_ms,
                client_name=client_name,
                client_circuit_breaker=client_circuit_breaker,
                tls=tls,
            ),
            connect_timeout_ms=connect_timeout_ms,
            tls_ca_file=tls_ca_file,
            tls_insecure=tls_insecure,
        )
    if sentinel_password is not None:
        raise ValueError("sentinel_password needs sentinel_service")
    if "," in urlsplit(url).netloc.rpartition("@")[2]:
        raise ValueError(
            f"Valkey URL {redact_url(url)!r} names several hosts: that is a list of"
            " Sentinels, which needs sentinel_service (or one host, or cluster=True)"
        )
    parsed = ValkeyURL.parse(url)
    tls = tls_config(parsed, tls_ca_file, tls_insecure)
    if cluster:
        return await GlideClusterClient.create(
            parsed.cluster_configuration(
                request_timeout_ms=request_timeout_ms,
                connect_timeout_ms=connect_timeout_ms,
                client_name=client_name,
                read_from_replica=read_from_replica,
                client_circuit_breaker=client_circuit_breaker,
                tls=tls,
            )
        )
    if read_from_replica:
        raise ValueError("read_from_replica needs cluster=True")
    config = parsed.configuration(
        request_timeout_ms=request_timeout_ms,
        connect_timeout_ms=connect_timeout_ms,
        client_name=client_name,
        client_circuit_breaker=client_circuit_breaker,
        tls=tls,
    )
    return await GlideClient.create(config)


async def sentinel_client(
    url: str,
    service: str,
    sentinel_password: str | None,
    configure: Callable[[ValkeyURL, TlsAdvancedConfiguration | None], GlideClientConfiguration],
    *,
    connect_timeout_ms: int,
    tls_ca_file: str | os.PathLike[str] | None,
    tls_insecure: bool,
) -> SentinelClient:
    """A ``SentinelClient`` whose clients ``configure`` builds for each primary named."""
    addresses, first = split_hosts(url)
    parsed = ValkeyURL.parse(first)
    tls = tls_config(parsed, tls_ca_file, tls_insecure)
    sentinels = Sentinels(
        addresses,
        service,
        # None: the data nodes' password; "": none (Backend.AI's spelling of "no AUTH").
        password=parsed.password if sentinel_password is None else sentinel_password or None,
        timeout_s=connect_timeout_ms / 1000,
    )

    async def connect(host: str, port: int) -> GlideClient:
        return await GlideClient.create(configure(replace(parsed, host=host, port=port), tls))

    return await SentinelClient.create(sentinels, connect)
