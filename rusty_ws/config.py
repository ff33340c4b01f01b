"""Every setting rusty_ws reads, its default, and the one place it is read.

Settings live in the Flask config under the ``RUSTY_WS_`` prefix. ``init_app``
fills in the defaults below with ``setdefault`` and builds one ``Settings``
object; nothing else reads the config. ``docs/configuration.md`` lists them.

The seed's ``JWT_SECRET_KEY`` and ``JWT_EXPIRATION_SECONDS`` are accepted as
aliases of ``RUSTY_WS_JWT_SECRET_KEY`` and ``RUSTY_WS_JWT_EXPIRATION_SECONDS``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError

__all__ = ["PREFIX", "DEFAULTS", "ALIASES", "Settings", "config_from_environ"]

PREFIX = "RUSTY_WS_"

#: HMAC key that signs tokens. None: a random key is made at start (tokens die with the process).
JWT_SECRET_KEY: str | None = None
#: Seconds a token lives.
JWT_EXPIRATION_SECONDS = 3600
#: Path of a JSON users file (username -> password hash). None: see CREDENTIAL_CHECKER.
USERS_FILE: str | None = None
#: Every connection must authenticate: one opened without a token is upgraded only to wait
#: AUTH_TIMEOUT seconds for ``auth:{token}`` as its first frame, else it is closed with 4001.
REQUIRE_AUTH = False
#: Seconds a connection opened without a token has to send ``auth:`` under REQUIRE_AUTH.
AUTH_TIMEOUT = 5.0
#: Seconds a connection may stay open past its token's ``exp`` before it is closed (4002).
TOKEN_EXPIRY_GRACE = 0.0
#: ``fnmatch`` patterns of the sessions anonymous connections may use (their ``default``
#: session included): a list, or one string of comma-separated patterns. "*": any (the seed's).
ANONYMOUS_SESSIONS: str | list[str] = "*"
#: ``fnmatch`` patterns of topics only the server's own code may publish to (clients may
#: subscribe, not publish: ``forbidden_topic``). Same forms as ANONYMOUS_SESSIONS.
SERVER_ONLY_TOPICS: str | list[str] = ()  # type: ignore[assignment]
#: Failed logins (``/auth/token``) from one client address within LOGIN_WINDOW past which
#: every login from it is answered 429 until the window passes; 0: no limit.
LOGIN_MAX_FAILURES_PER_ADDRESS = 20
#: Failed logins for one username from one client address within LOGIN_WINDOW past which
#: that username's logins from it are answered 429; 0: no limit.
LOGIN_MAX_FAILURES_PER_USER_ADDRESS = 5
#: Seconds the failures above are counted over; 0 turns both limits off.
LOGIN_WINDOW = 60.0
#: Client addresses (and username-address pairs) whose failures are remembered at once; past
#: it the oldest are forgotten first (the counters' memory bound: ~200 bytes each).
LOGIN_MAX_TRACKED = 50_000
#: Addresses or networks (``10.0.0.0/8``) of the reverse proxies whose ``X-Forwarded-For``
#: names the client; empty: the client is the socket's peer, and the header is ignored.
TRUSTED_PROXIES: str | list[str] = ()  # type: ignore[assignment]
#: Other origins allowed to call the HTTP endpoints and to open WebSockets: "*" (any) or a
#: list; an empty list allows only the hub's own origin (and non-browser clients).
CORS_ORIGINS: str | list[str] = "*"
#: Serve the hub's web page at the hub's root (``<url_prefix>/``); the JS modules are always served.
#: None: in development mode only (the stand-alone hub sets True).
SERVE_PAGE: bool | None = None
#: Development mode: with no users file and no credential hook, the demo login testuser/password
#: works and may have any session. None: for the stand-alone hub (``create_app`` sets True) and
#: for an app in debug mode (``app.debug``), never for an embedding app in production.
DEV_MODE: bool | None = None
#: Largest incoming message, in bytes; bigger ones close the connection with 1009.
MAX_MESSAGE_SIZE = 1024 * 1024
#: Subscriptions one connection may hold.
MAX_SUBSCRIPTIONS = 1000
#: Open WebSocket connections the hub accepts; more get HTTP 503. None: for the stand-alone hub
#: (``create_app`` outside gunicorn) what its file-descriptor limit allows (``server/limits.py``:
#: the soft limit raised to the hard one, less a reserve); else MAX_CONNECTIONS_EMBEDDED.
MAX_CONNECTIONS: int | None = None
#: Not a setting: MAX_CONNECTIONS when it is None in an embedding app or under gunicorn.
MAX_CONNECTIONS_EMBEDDED = 1000
#: Bytes that may wait to be sent to one connection; past it the connection is closed (4100).
MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: Seconds of silence from a client before the server pings it; 0 turns keepalive off.
PING_INTERVAL = 20.0
#: Seconds to wait for the pong before the connection is dropped (4102).
PING_TIMEOUT = 20.0
#: Seconds to wait for the client's half of a closing handshake.
CLOSE_TIMEOUT = 2.0
#: WebSocket handshakes per second that a hub shutting down asks its clients to spread their
#: reconnections to: the 4200 close reason names a window of (connections / this) seconds
#: when that is more than the usual 1 s (docs/protocol.md, "Reconnect storms").
RECONNECT_RATE = 1500
#: Where publishes go: "memory://" (this process only) or "redis://host:port/db" (docs/scaling.md).
BROKER_URL = "memory://"
#: Redis broker: publishes (and other commands) that may wait in a node's Redis sender at
#: once; past it, publishers wait for room (backpressure). While Redis is unreachable the
#: sender fails what waits at once (counted ``unsent``), so it never fills for an outage.
REDIS_SEND_QUEUE = 10_000
#: Redis broker: bytes that may wait in the sender at once (the same; one bigger publish
#: alone is let in).
REDIS_SEND_QUEUE_BYTES = 32 * 1024 * 1024
#: Redis Cluster broker: seconds a command the cluster cannot take yet (a master failing over,
#: a slot migrating) is held to be sent again; 0 never sends one again (docs/scaling.md).
BROKER_RETRY_TIMEOUT = 5.0
#: sys.setswitchinterval() for the process, in seconds; None leaves it alone. The stand-alone
#: hub (create_app) uses 0.5: with a thread per connection, the default 5 ms makes every
#: thread waiting for the GIL wake 200 times a second, and thousands of threads woken at once
#: (a mass disconnect) flooded the GIL's mutex even at 0.05 (see docs/performance.md).
SWITCH_INTERVAL: float | None = None
#: zlib level (1-9) of permessage-deflate for clients that offer it; 0 never compresses.
#: Off by default: it costs CPU per delivery and helps only large, compressible messages
#: (docs/performance.md#compression).
COMPRESSION = 0
#: Seconds a refresh chain lives, from the login that began it (the token's ``auth_time``):
#: no token's ``exp`` goes past it and ``/auth/refresh`` refuses after it. 0: no limit.
JWT_MAX_LIFETIME = 86400
#: Password checks (``/auth/token``) that run at once; a users-file check costs ~32 MiB.
MAX_CONCURRENT_LOGINS = 4
#: Seconds a login waits for a free check before it gets HTTP 503 with Retry-After.
LOGIN_QUEUE_TIMEOUT = 5.0
#: What ``/healthz`` tells anyone who asks: "full" (every count, the broker's node id),
#: "minimal" (just ``status``), or "off" (404).
HEALTHZ = "full"
#: Host names (``Host`` header) the hub answers to: "*" (any) or a list; an entry with a
#: port must match it, one without matches any port. None: any while CORS_ORIGINS is "*",
#: else the loopback names and the hosts of CORS_ORIGINS (against DNS rebinding).
ALLOWED_HOSTS: str | list[str] | None = None
#: Seconds a client has to send a whole request head (request line and headers), counted from
#: when its socket is accepted or, on a kept-alive connection, from the end of the request
#: before; past it the socket is closed. Applied by the hub's own server (``rusty-ws serve``).
REQUEST_HEAD_TIMEOUT = 10.0
#: Largest request head (request line and headers), in bytes; a bigger one gets 431 (414 when
#: the request line alone is bigger). Applied by the hub's own server.
MAX_REQUEST_HEAD_SIZE = 32 * 1024
#: Sockets that may wait for their request head at once (each holds a thread); one more is
#: answered 503 and closed at once, without a thread. Applied by the hub's own server.
MAX_PENDING_REQUESTS = 256
#: Requests the hub's own server may have under way at once (past their head, short of an open
#: WebSocket: upgrading, or a connection's thread ending); past it the accept thread answers the
#: next request but /healthz 503 with Retry-After, without a thread (docs/protocol.md,
#: "Reconnect storms"). A safety net against thousands of handshake threads: the accept loop
#: starts one at a time, yet a burst of 2,000 new connections on a quiet machine had more than
#: 1,024 under way (all past their head, waiting for the interpreter lock) and was refused; at
#: 64 a 1,000-client connect at a load of thousands was; at 4096, once the plain handshake skipped
#: werkzeug's handler (session 13), a 10,000-client connect had 4,110-4,992 under way (past their
#: 101, waiting for the interpreter lock to reach their loop) and was refused. 0: no bound.
MAX_HANDSHAKES = 8192
#: The same answer when more than this many connections wait in the accept queue (Linux's
#: TCP_INFO): just short of the listen backlog (4096), past which the system drops new
#: connections' SYNs and their clients retry 1, 3, 7, 15 s later (docs/performance.md,
#: "Reconnect storm"). 0: no bound.
MAX_ACCEPT_QUEUE = 3072
#: The hub's internal port: its HTTP routes that must answer under load (``/healthz``), served
#: by ``rusty-ws serve`` on a listening socket and a thread of their own, so that a health check
#: does not wait in the accept queue behind a reconnect storm's handshakes
#: (docs/configuration.md, "The internal port"). None: no internal port; 0: any free port (logged).
INTERNAL_PORT: int | None = None
#: The address the internal port listens on: loopback unless set (``0.0.0.0`` for a probe
#: from outside the machine or the pod, as Kubernetes' are).
INTERNAL_HOST = "127.0.0.1"
#: Messages kept per (topic, session) stream for recovery and ``history:``; 0 turns history
#: off (deliveries then carry no offset/epoch). See docs/protocol.md, "History and recovery".
HISTORY_SIZE = 100
#: Seconds a message is kept; also how long a stream without subscribers or messages lives.
HISTORY_TTL = 300.0
#: Encoded bytes kept over all streams; past it the oldest messages go first.
HISTORY_MAX_BYTES = 64 * 1024 * 1024
#: Seconds a publish ``id`` is remembered in its session: a repeat within it is acknowledged, not delivered.
IDEMPOTENCY_WINDOW = 300.0
#: Publish ids remembered in all (every session); past it the oldest are forgotten first.
IDEMPOTENCY_MAX_IDS = 100_000
#: What all connections' queues may hold together (frames' bytes plus 64 per frame, as
#: MAX_QUEUED_BYTES counts, but a frame queued for many connections once); past it the
#: connections holding the most are closed first (4100).
#: None: an eighth of the memory this process may use (see ``total_queued_bytes_default``).
MAX_TOTAL_QUEUED_BYTES: int | None = None
#: Not a setting but a rule between two: ``MAX_QUEUED_BYTES`` must hold one message of
#: ``MAX_MESSAGE_SIZE`` plus this much, room for the fields the hub adds to a delivery
#: (names, session, timestamp, offset) and its frame header.
QUEUED_BYTES_MARGIN = 16 * 1024

DEFAULTS: dict[str, Any] = {
    PREFIX + name: value
    for name, value in dict(
        JWT_SECRET_KEY=JWT_SECRET_KEY,
        JWT_EXPIRATION_SECONDS=JWT_EXPIRATION_SECONDS,
        USERS_FILE=USERS_FILE,
        REQUIRE_AUTH=REQUIRE_AUTH,
        AUTH_TIMEOUT=AUTH_TIMEOUT,
        TOKEN_EXPIRY_GRACE=TOKEN_EXPIRY_GRACE,
        ANONYMOUS_SESSIONS=ANONYMOUS_SESSIONS,
        SERVER_ONLY_TOPICS=list(SERVER_ONLY_TOPICS),
        LOGIN_MAX_FAILURES_PER_ADDRESS=LOGIN_MAX_FAILURES_PER_ADDRESS,
        LOGIN_MAX_FAILURES_PER_USER_ADDRESS=LOGIN_MAX_FAILURES_PER_USER_ADDRESS,
        LOGIN_WINDOW=LOGIN_WINDOW,
        LOGIN_MAX_TRACKED=LOGIN_MAX_TRACKED,
        TRUSTED_PROXIES=list(TRUSTED_PROXIES),
        CORS_ORIGINS=CORS_ORIGINS,
        SERVE_PAGE=SERVE_PAGE,
        DEV_MODE=DEV_MODE,
        MAX_MESSAGE_SIZE=MAX_MESSAGE_SIZE,
        MAX_SUBSCRIPTIONS=MAX_SUBSCRIPTIONS,
        MAX_CONNECTIONS=MAX_CONNECTIONS,
        MAX_QUEUED_BYTES=MAX_QUEUED_BYTES,
        PING_INTERVAL=PING_INTERVAL,
        PING_TIMEOUT=PING_TIMEOUT,
        CLOSE_TIMEOUT=CLOSE_TIMEOUT,
        RECONNECT_RATE=RECONNECT_RATE,
        BROKER_URL=BROKER_URL,
        REDIS_SEND_QUEUE=REDIS_SEND_QUEUE,
        REDIS_SEND_QUEUE_BYTES=REDIS_SEND_QUEUE_BYTES,
        BROKER_RETRY_TIMEOUT=BROKER_RETRY_TIMEOUT,
        SWITCH_INTERVAL=SWITCH_INTERVAL,
        COMPRESSION=COMPRESSION,
        JWT_MAX_LIFETIME=JWT_MAX_LIFETIME,
        MAX_CONCURRENT_LOGINS=MAX_CONCURRENT_LOGINS,
        LOGIN_QUEUE_TIMEOUT=LOGIN_QUEUE_TIMEOUT,
        HEALTHZ=HEALTHZ,
        ALLOWED_HOSTS=ALLOWED_HOSTS,
        REQUEST_HEAD_TIMEOUT=REQUEST_HEAD_TIMEOUT,
        MAX_REQUEST_HEAD_SIZE=MAX_REQUEST_HEAD_SIZE,
        MAX_PENDING_REQUESTS=MAX_PENDING_REQUESTS,
        MAX_HANDSHAKES=MAX_HANDSHAKES,
        MAX_ACCEPT_QUEUE=MAX_ACCEPT_QUEUE,
        INTERNAL_PORT=INTERNAL_PORT,
        INTERNAL_HOST=INTERNAL_HOST,
        HISTORY_SIZE=HISTORY_SIZE,
        HISTORY_TTL=HISTORY_TTL,
        HISTORY_MAX_BYTES=HISTORY_MAX_BYTES,
        IDEMPOTENCY_WINDOW=IDEMPOTENCY_WINDOW,
        IDEMPOTENCY_MAX_IDS=IDEMPOTENCY_MAX_IDS,
        MAX_TOTAL_QUEUED_BYTES=MAX_TOTAL_QUEUED_BYTES,
    ).items()
}

#: The seed's names, read when the prefixed key is not set.
ALIASES = {
    "JWT_SECRET_KEY": PREFIX + "JWT_SECRET_KEY",
    "JWT_EXPIRATION_SECONDS": PREFIX + "JWT_EXPIRATION_SECONDS",
}


#: Kept as strings from the environment (pattern lists parse their own JSON: ``_patterns``).
_STRING_KEYS = {PREFIX + name for name in ("JWT_SECRET_KEY", "USERS_FILE", "BROKER_URL", "ANONYMOUS_SESSIONS",
                                           "SERVER_ONLY_TOPICS", "TRUSTED_PROXIES",
                                           "INTERNAL_HOST")}


def _parse_env_value(value: str) -> Any:
    """Like Flask's ``from_prefixed_env``: JSON if it parses, else the string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def config_from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings found in environment variables (``RUSTY_WS_*`` and the seed's aliases).

    Values are parsed as JSON when they parse (``true``, ``5000``), like Flask's
    ``from_prefixed_env``; secrets, paths and URLs are always kept as strings.
    """
    found: dict[str, str] = {}
    # Aliases first, so the prefixed names win; a variable set but empty counts as unset.
    for name, key in [*ALIASES.items(), *((key, key) for key in DEFAULTS)]:
        if environ.get(name, "").strip():
            found[key] = environ[name]
    return {
        key: value if key in _STRING_KEYS else _parse_env_value(value)
        for key, value in found.items()
    }


def _number(setting: str, value: Any, *, allow_zero: bool = False, whole: bool = False,
            unit: str = "") -> float:
    """``value`` as a finite number, > 0 (or >= 0 with ``allow_zero``); raises ``ConfigError``."""
    kind = f"a whole number{unit}" if whole else f"a number{unit}"
    expected = f"must be {kind} {'>= 0' if allow_zero else '> 0'}"
    if isinstance(value, bool):  # float(True) is 1.0: a flag given where a number belongs
        raise ConfigError(setting, value, expected)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(setting, value, expected) from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(setting, value, expected)
    if whole and number != int(number):
        raise ConfigError(setting, value, expected)
    return number


def _positive(setting: str, value: Any, *, allow_zero: bool = False) -> float:
    """Seconds: a finite number > 0 (>= 0 with ``allow_zero``)."""
    return _number(setting, value, allow_zero=allow_zero, unit=" of seconds")


def _whole(setting: str, value: Any) -> int:
    return int(_number(setting, value, whole=True))


def _count(setting: str, value: Any) -> int:
    """A whole number, 0 allowed (0 turns the feature off)."""
    return int(_number(setting, value, allow_zero=True, whole=True))


def _port(setting: str, value: Any) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    number = int(_number(setting, value, allow_zero=True, whole=True))
    if number > 65535:
        raise ConfigError(setting, value, "must be a port, 0 to 65535")
    return number


def _address(setting: str, value: Any) -> str:
    """An address to listen on: a non-empty string without blanks (an IP address or a host name)."""
    if not isinstance(value, str) or not value.strip() or any(ch.isspace() for ch in value.strip()):
        raise ConfigError(setting, value, "must be an address to listen on, such as 127.0.0.1 or 0.0.0.0")
    return value.strip()


def _level(setting: str, value: Any) -> int:
    if value is False or value is None:
        return 0
    if value is True:
        return 1
    try:
        number = _number(setting, value, allow_zero=True, whole=True)
    except ConfigError:
        number = -1
    if not 0 <= number <= 9:
        raise ConfigError(setting, value, "must be a zlib level from 1 to 9, or 0 for off")
    return int(number)


def total_queued_bytes_default() -> int:
    """The default of ``MAX_TOTAL_QUEUED_BYTES``: an eighth of the memory this process may use.

    That is the machine's physical memory, or the cgroup's memory limit (a container) when
    it is lower; at least 64 MiB; 1 GiB where neither can be read.
    """
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass  # not a POSIX system that tells
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as handle:
                sizes.append(int(handle.read()))  # cgroup v1's "no limit" is a huge number: min() skips it
        except (OSError, ValueError):
            continue  # no cgroup limit ("max"), or not Linux
    sizes = [size for size in sizes if size > 0]
    return max(64 << 20, min(sizes) // 8) if sizes else 1 << 30


def _queue_bounds(message_size: int, queued: int, total: Any) -> int:
    """Check that one message fits in a queue and one queue in the total; return the total."""
    if queued < message_size + QUEUED_BYTES_MARGIN:
        raise ConfigError(
            PREFIX + "MAX_QUEUED_BYTES", queued,
            f"must hold one message of {PREFIX}MAX_MESSAGE_SIZE ({message_size}): at least "
            f"{message_size + QUEUED_BYTES_MARGIN} ({PREFIX}MAX_MESSAGE_SIZE + {QUEUED_BYTES_MARGIN}); "
            f"raise it or lower {PREFIX}MAX_MESSAGE_SIZE",
        )
    total = total_queued_bytes_default() if total is None else _whole(PREFIX + "MAX_TOTAL_QUEUED_BYTES", total)
    if total < queued:
        raise ConfigError(PREFIX + "MAX_TOTAL_QUEUED_BYTES", total,
                          f"must be at least {PREFIX}MAX_QUEUED_BYTES ({queued}): one queue must fit in the total")
    return total


def _origins(setting: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(setting, value, "must be '*' or a list of origins such as 'https://shop.example'")
    return tuple(str(origin).strip().rstrip("/") for origin in value if str(origin).strip())


def _patterns(setting: str, value: Any) -> tuple[str, ...]:
    """A pattern setting: a list, a JSON list in a string, or a comma-separated string."""
    given = value
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ConfigError(setting, given, "must be a JSON list of glob patterns") from None
        else:
            value = text.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ConfigError(setting, given, "must be a list of glob patterns or a comma-separated string")
    return tuple(dict.fromkeys(item.strip() for item in value if item.strip()))


def _networks(setting: str, value: Any) -> tuple[Any, ...]:
    """TRUSTED_PROXIES: addresses and networks, as ``ipaddress`` networks."""
    networks = []
    for item in _patterns(setting, value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(setting, value, f"{item!r} is no IP address or network") from None
    return tuple(networks)


#: The values of HEALTHZ.
HEALTHZ_MODES = ("full", "minimal", "off")
#: Names of this machine that DNS rebinding cannot point elsewhere.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _choice(setting: str, value: Any, choices: tuple[str, ...]) -> str:
    word = str(value).strip().lower()
    if word not in choices:
        raise ConfigError(setting, value, f"must be one of {', '.join(choices)}")
    return word


def _allowed_hosts(setting: str, value: Any, origins: tuple[str, ...]) -> tuple[str, ...]:
    """ALLOWED_HOSTS as lowercase names (``host`` or ``host:port``), derived when it is None."""
    if value is None:
        if "*" in origins:
            return ("*",)
        derived = (split_host(origin.partition("://")[2].partition("/")[0])[0] for origin in origins)
        value = [*LOOPBACK_HOSTS, *derived]
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(setting, value, "must be '*' or a list of host names")
    return tuple(dict.fromkeys(str(host).strip().lower() for host in value if str(host).strip()))


def split_host(host: str) -> tuple[str, str | None]:
    """``"Hub.example:8081"`` -> ``("hub.example", "8081")``; ``"[::1]"`` -> ``("[::1]", None)``."""
    host = host.strip().lower()
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name, port
    return host, None


@dataclass(frozen=True)
class Settings:
    """The hub's settings, checked once when the extension is set up."""

    jwt_secret_key: str | None
    jwt_expiration_seconds: int
    users_file: str | None
    require_auth: bool
    cors_origins: tuple[str, ...]
    serve_page: bool | None
    max_message_size: int
    max_subscriptions: int
    max_connections: int
    max_queued_bytes: int
    ping_interval: float
    ping_timeout: float
    close_timeout: float
    broker_url: str
    switch_interval: float | None
    compression: int
    dev_mode: bool | None = None
    jwt_max_lifetime: int = JWT_MAX_LIFETIME
    max_concurrent_logins: int = MAX_CONCURRENT_LOGINS
    login_queue_timeout: float = LOGIN_QUEUE_TIMEOUT
    reconnect_rate: int = RECONNECT_RATE
    healthz: str = HEALTHZ
    allowed_hosts: tuple[str, ...] = ("*",)
    request_head_timeout: float = REQUEST_HEAD_TIMEOUT
    max_request_head_size: int = MAX_REQUEST_HEAD_SIZE
    max_pending_requests: int = MAX_PENDING_REQUESTS
    max_handshakes: int = MAX_HANDSHAKES
    max_accept_queue: int = MAX_ACCEPT_QUEUE
    internal_port: int | None = INTERNAL_PORT
    internal_host: str = INTERNAL_HOST
    history_size: int = HISTORY_SIZE
    history_ttl: float = HISTORY_TTL
    history_max_bytes: int = HISTORY_MAX_BYTES
    idempotency_window: float = IDEMPOTENCY_WINDOW
    idempotency_max_ids: int = IDEMPOTENCY_MAX_IDS
    max_total_queued_bytes: int = 1 << 30
    auth_timeout: float = AUTH_TIMEOUT
    token_expiry_grace: float = TOKEN_EXPIRY_GRACE
    anonymous_sessions: tuple[str, ...] = ("*",)
    server_only_topics: tuple[str, ...] = ()
    login_max_failures_per_address: int = LOGIN_MAX_FAILURES_PER_ADDRESS
    login_max_failures_per_user_address: int = LOGIN_MAX_FAILURES_PER_USER_ADDRESS
    login_window: float = LOGIN_WINDOW
    login_max_tracked: int = LOGIN_MAX_TRACKED
    trusted_proxies: tuple[Any, ...] = ()
    redis_send_queue: int = REDIS_SEND_QUEUE
    redis_send_queue_bytes: int = REDIS_SEND_QUEUE_BYTES
    broker_retry_timeout: float = BROKER_RETRY_TIMEOUT

    @classmethod
    def from_config(cls, config: MutableMapping[str, Any]) -> "Settings":
        """Fill in defaults in ``config`` (``setdefault``) and check every value.

        Raises:
            ConfigError: a setting has a value that cannot work (a ``ValueError``); its
                message names the setting (as given: an alias by its own name), the
                value and what is expected.
        """
        given = {}  # key -> the name the value was given under, for error messages
        for alias, key in ALIASES.items():
            if config.get(key) is None and config.get(alias) is not None:
                config[key] = config[alias]
                given[key] = alias
        for key, value in DEFAULTS.items():
            config.setdefault(key, value)

        def get(name: str) -> Any:
            return config[PREFIX + name]

        def check(check: Callable[..., Any], name: str, *args: Any, **options: Any) -> Any:
            key = PREFIX + name
            return check(given.get(key, key), config[key], *args, **options)

        secret = get("JWT_SECRET_KEY")
        origins = check(_origins, "CORS_ORIGINS")
        return cls(
            jwt_secret_key=str(secret) if secret else None,
            jwt_expiration_seconds=check(_whole, "JWT_EXPIRATION_SECONDS"),
            users_file=check(_path, "USERS_FILE"),
            require_auth=check(_flag, "REQUIRE_AUTH"),
            cors_origins=origins,
            serve_page=None if get("SERVE_PAGE") is None else check(_flag, "SERVE_PAGE"),
            dev_mode=None if get("DEV_MODE") is None else check(_flag, "DEV_MODE"),
            max_message_size=check(_whole, "MAX_MESSAGE_SIZE"),
            max_subscriptions=check(_whole, "MAX_SUBSCRIPTIONS"),
            max_connections=MAX_CONNECTIONS_EMBEDDED if get("MAX_CONNECTIONS") is None else check(
                _whole, "MAX_CONNECTIONS"),
            max_queued_bytes=check(_whole, "MAX_QUEUED_BYTES"),
            ping_interval=check(_positive, "PING_INTERVAL", allow_zero=True),
            ping_timeout=check(_positive, "PING_TIMEOUT"),
            close_timeout=check(_positive, "CLOSE_TIMEOUT"),
            reconnect_rate=check(_whole, "RECONNECT_RATE"),
            broker_url=str(get("BROKER_URL") or BROKER_URL),
            switch_interval=None if get("SWITCH_INTERVAL") is None else check(_positive, "SWITCH_INTERVAL"),
            compression=check(_level, "COMPRESSION"),
            jwt_max_lifetime=check(_count, "JWT_MAX_LIFETIME"),
            max_concurrent_logins=check(_whole, "MAX_CONCURRENT_LOGINS"),
            login_queue_timeout=check(_positive, "LOGIN_QUEUE_TIMEOUT", allow_zero=True),
            healthz=check(_choice, "HEALTHZ", HEALTHZ_MODES),
            allowed_hosts=check(_allowed_hosts, "ALLOWED_HOSTS", origins),
            request_head_timeout=check(_positive, "REQUEST_HEAD_TIMEOUT"),
            max_request_head_size=check(_whole, "MAX_REQUEST_HEAD_SIZE"),
            max_pending_requests=check(_whole, "MAX_PENDING_REQUESTS"),
            max_handshakes=check(_count, "MAX_HANDSHAKES"),
            max_accept_queue=check(_count, "MAX_ACCEPT_QUEUE"),
            internal_port=None if get("INTERNAL_PORT") is None else check(_port, "INTERNAL_PORT"),
            internal_host=check(_address, "INTERNAL_HOST"),
            history_size=check(_count, "HISTORY_SIZE"),
            history_ttl=check(_positive, "HISTORY_TTL"),
            history_max_bytes=check(_whole, "HISTORY_MAX_BYTES"),
            idempotency_window=check(_positive, "IDEMPOTENCY_WINDOW"),
            idempotency_max_ids=check(_whole, "IDEMPOTENCY_MAX_IDS"),
            max_total_queued_bytes=_queue_bounds(
                check(_whole, "MAX_MESSAGE_SIZE"), check(_whole, "MAX_QUEUED_BYTES"), get("MAX_TOTAL_QUEUED_BYTES"),
            ),
            auth_timeout=check(_positive, "AUTH_TIMEOUT"),
            token_expiry_grace=check(_positive, "TOKEN_EXPIRY_GRACE", allow_zero=True),
            anonymous_sessions=check(_patterns, "ANONYMOUS_SESSIONS"),
            server_only_topics=check(_patterns, "SERVER_ONLY_TOPICS"),
            login_max_failures_per_address=check(_count, "LOGIN_MAX_FAILURES_PER_ADDRESS"),
            login_max_failures_per_user_address=check(_count, "LOGIN_MAX_FAILURES_PER_USER_ADDRESS"),
            login_window=check(_positive, "LOGIN_WINDOW", allow_zero=True),
            login_max_tracked=check(_whole, "LOGIN_MAX_TRACKED"),
            trusted_proxies=check(_networks, "TRUSTED_PROXIES"),
            redis_send_queue=check(_whole, "REDIS_SEND_QUEUE"),
            redis_send_queue_bytes=check(_whole, "REDIS_SEND_QUEUE_BYTES"),
            broker_retry_timeout=check(_positive, "BROKER_RETRY_TIMEOUT", allow_zero=True),
        )

    def host_allowed(self, host: str | None) -> bool:
        """May a request sent to ``host`` (its ``Host`` header) use the hub? See ALLOWED_HOSTS."""
        if "*" in self.allowed_hosts:
            return True
        if not host:
            return False
        name, port = split_host(host)
        return name in self.allowed_hosts or (port is not None and f"{name}:{port}" in self.allowed_hosts)

    def origin_allowed(self, origin: str | None, host: str | None = None) -> bool:
        """May a request from ``origin`` to the hub at ``host`` use it?

        No Origin header (not a browser) and the hub's own origin are always
        allowed; other origins when listed in ``cors_origins`` or when it holds "*".
        """
        if origin is None or "*" in self.cors_origins:
            return True
        origin = origin.rstrip("/")
        if host and origin.partition("://")[2].lower() == host.lower():
            return True
        return origin in self.cors_origins


_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"", "0", "false", "no", "off"}


def _flag(setting: str, value: Any) -> bool:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS | _FALSE_WORDS:
            return word in _TRUE_WORDS
    elif value is None or (isinstance(value, (bool, int)) and value in (0, 1)):
        return bool(value)
    raise ConfigError(setting, value, "must be true or false (also 1/0, yes/no, on/off)")


def _path(setting: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(setting, value, "must be the path of a file")
    return os.fspath(value)
