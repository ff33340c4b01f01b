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
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

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
SERVE_PAGE = True
#: Largest incoming message, in bytes; bigger ones close the connection with 1009.
MAX_MESSAGE_SIZE = 1024 * 1024
#: Subscriptions one connection may hold.
MAX_SUBSCRIPTIONS = 1000
#: Open WebSocket connections the hub accepts; more get HTTP 503.
MAX_CONNECTIONS = 1000
#: Bytes that may wait to be sent to one connection; past it the connection is closed (4100).
MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: Seconds of silence from a client before the server pings it; 0 turns keepalive off.
PING_INTERVAL = 20.0
#: Seconds to wait for the pong before the connection is dropped (4102).
PING_TIMEOUT = 20.0
#: Seconds to wait for the client's half of a closing handshake.
CLOSE_TIMEOUT = 2.0
#: Where publishes go: "memory://" (this process only) or "redis://host:port/db" (docs/scaling.md).
BROKER_URL = "memory://"
#: sys.setswitchinterval() for the process, in seconds; None leaves it alone. The stand-alone
#: hub (create_app) uses 0.05: with a thread per connection, the default 5 ms makes every
#: thread waiting for the GIL wake 200 times a second (see docs/performance.md).
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
        MAX_MESSAGE_SIZE=MAX_MESSAGE_SIZE,
        MAX_SUBSCRIPTIONS=MAX_SUBSCRIPTIONS,
        MAX_CONNECTIONS=MAX_CONNECTIONS,
        MAX_QUEUED_BYTES=MAX_QUEUED_BYTES,
        PING_INTERVAL=PING_INTERVAL,
        PING_TIMEOUT=PING_TIMEOUT,
        CLOSE_TIMEOUT=CLOSE_TIMEOUT,
        BROKER_URL=BROKER_URL,
        SWITCH_INTERVAL=SWITCH_INTERVAL,
        COMPRESSION=COMPRESSION,
        JWT_MAX_LIFETIME=JWT_MAX_LIFETIME,
        MAX_CONCURRENT_LOGINS=MAX_CONCURRENT_LOGINS,
        LOGIN_QUEUE_TIMEOUT=LOGIN_QUEUE_TIMEOUT,
        HEALTHZ=HEALTHZ,
        ALLOWED_HOSTS=ALLOWED_HOSTS,
        HISTORY_SIZE=HISTORY_SIZE,
        HISTORY_TTL=HISTORY_TTL,
        HISTORY_MAX_BYTES=HISTORY_MAX_BYTES,
        IDEMPOTENCY_WINDOW=IDEMPOTENCY_WINDOW,
        IDEMPOTENCY_MAX_IDS=IDEMPOTENCY_MAX_IDS,
    ).items()
}

#: The seed's names, read when the prefixed key is not set.
ALIASES = {
    "JWT_SECRET_KEY": PREFIX + "JWT_SECRET_KEY",
    "JWT_EXPIRATION_SECONDS": PREFIX + "JWT_EXPIRATION_SECONDS",
}


#: Kept as strings from the environment (pattern lists parse their own JSON: ``_patterns``).
_STRING_KEYS = {PREFIX + name for name in ("JWT_SECRET_KEY", "USERS_FILE", "BROKER_URL", "ANONYMOUS_SESSIONS",
                                           "SERVER_ONLY_TOPICS", "TRUSTED_PROXIES")}


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


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{PREFIX}{name} must be a number, not {value!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{PREFIX}{name} must be {'>= 0' if allow_zero else '> 0'}")
    return number


def _whole(name: str, value: Any) -> int:
    number = _positive(name, value)
    if number != int(number):
        raise ValueError(f"{PREFIX}{name} must be a whole number, not {value!r}")
    return int(number)


def _count(name: str, value: Any) -> int:
    """A whole number, 0 allowed (0 turns the feature off)."""
    number = _positive(name, value, allow_zero=True)
    if number != int(number):
        raise ValueError(f"{PREFIX}{name} must be a whole number, not {value!r}")
    return int(number)


def _level(name: str, value: Any) -> int:
    if value is False or value is None:
        return 0
    number = _positive(name, value, allow_zero=True)
    if number != int(number) or number > 9:
        raise ValueError(f"{PREFIX}{name} must be a zlib level from 1 to 9, or 0 for off, not {value!r}")
    return int(number)


def _origins(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    return tuple(str(origin).strip().rstrip("/") for origin in value if str(origin).strip())


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """A pattern setting: a list, a JSON list in a string, or a comma-separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"{PREFIX}{name} is not a JSON list: {value!r}") from None
        else:
            value = text.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{PREFIX}{name} must be a list of glob patterns or a comma-separated "
                         f"string, not {value!r}")
    return tuple(dict.fromkeys(item.strip() for item in value if item.strip()))


def _networks(name: str, value: Any) -> tuple[Any, ...]:
    """TRUSTED_PROXIES: addresses and networks, as ``ipaddress`` networks."""
    networks = []
    for item in _patterns(name, value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{PREFIX}{name}: {item!r} is no IP address or network") from None
    return tuple(networks)


#: The values of HEALTHZ.
HEALTHZ_MODES = ("full", "minimal", "off")
#: Names of this machine that DNS rebinding cannot point elsewhere.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    word = str(value).strip().lower()
    if word not in choices:
        raise ValueError(f"{PREFIX}{name} must be one of {', '.join(choices)}, not {value!r}")
    return word


def _allowed_hosts(value: Any, origins: tuple[str, ...]) -> tuple[str, ...]:
    """ALLOWED_HOSTS as lowercase names (``host`` or ``host:port``), derived when it is None."""
    if value is None:
        if "*" in origins:
            return ("*",)
        derived = (split_host(origin.partition("://")[2].partition("/")[0])[0] for origin in origins)
        value = [*LOOPBACK_HOSTS, *derived]
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{PREFIX}ALLOWED_HOSTS must be '*' or a list of host names, not {value!r}")
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
    serve_page: bool
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
    jwt_max_lifetime: int = JWT_MAX_LIFETIME
    max_concurrent_logins: int = MAX_CONCURRENT_LOGINS
    login_queue_timeout: float = LOGIN_QUEUE_TIMEOUT
    healthz: str = HEALTHZ
    allowed_hosts: tuple[str, ...] = ("*",)
    history_size: int = HISTORY_SIZE
    history_ttl: float = HISTORY_TTL
    history_max_bytes: int = HISTORY_MAX_BYTES
    idempotency_window: float = IDEMPOTENCY_WINDOW
    idempotency_max_ids: int = IDEMPOTENCY_MAX_IDS
    auth_timeout: float = AUTH_TIMEOUT
    token_expiry_grace: float = TOKEN_EXPIRY_GRACE
    anonymous_sessions: tuple[str, ...] = ("*",)
    server_only_topics: tuple[str, ...] = ()
    login_max_failures_per_address: int = LOGIN_MAX_FAILURES_PER_ADDRESS
    login_max_failures_per_user_address: int = LOGIN_MAX_FAILURES_PER_USER_ADDRESS
    login_window: float = LOGIN_WINDOW
    login_max_tracked: int = LOGIN_MAX_TRACKED
    trusted_proxies: tuple[Any, ...] = ()

    @classmethod
    def from_config(cls, config: MutableMapping[str, Any]) -> "Settings":
        """Fill in defaults in ``config`` (``setdefault``) and check every value.

        Raises:
            ValueError: a setting has a value that cannot work.
        """
        for alias, key in ALIASES.items():
            if config.get(key) is None and config.get(alias) is not None:
                config[key] = config[alias]
        for key, value in DEFAULTS.items():
            config.setdefault(key, value)

        def get(name: str) -> Any:
            return config[PREFIX + name]

        secret = get("JWT_SECRET_KEY")
        return cls(
            jwt_secret_key=str(secret) if secret else None,
            jwt_expiration_seconds=_whole("JWT_EXPIRATION_SECONDS", get("JWT_EXPIRATION_SECONDS")),
            users_file=get("USERS_FILE") or None,
            require_auth=_flag(get("REQUIRE_AUTH")),
            cors_origins=_origins(get("CORS_ORIGINS")),
            serve_page=_flag(get("SERVE_PAGE")),
            max_message_size=_whole("MAX_MESSAGE_SIZE", get("MAX_MESSAGE_SIZE")),
            max_subscriptions=_whole("MAX_SUBSCRIPTIONS", get("MAX_SUBSCRIPTIONS")),
            max_connections=_whole("MAX_CONNECTIONS", get("MAX_CONNECTIONS")),
            max_queued_bytes=_whole("MAX_QUEUED_BYTES", get("MAX_QUEUED_BYTES")),
            ping_interval=_positive("PING_INTERVAL", get("PING_INTERVAL"), allow_zero=True),
            ping_timeout=_positive("PING_TIMEOUT", get("PING_TIMEOUT")),
            close_timeout=_positive("CLOSE_TIMEOUT", get("CLOSE_TIMEOUT")),
            broker_url=str(get("BROKER_URL") or BROKER_URL),
            switch_interval=(None if get("SWITCH_INTERVAL") is None
                             else _positive("SWITCH_INTERVAL", get("SWITCH_INTERVAL"))),
            compression=_level("COMPRESSION", get("COMPRESSION")),
            jwt_max_lifetime=_count("JWT_MAX_LIFETIME", get("JWT_MAX_LIFETIME")),
            max_concurrent_logins=_whole("MAX_CONCURRENT_LOGINS", get("MAX_CONCURRENT_LOGINS")),
            login_queue_timeout=_positive("LOGIN_QUEUE_TIMEOUT", get("LOGIN_QUEUE_TIMEOUT"), allow_zero=True),
            healthz=_choice("HEALTHZ", get("HEALTHZ"), HEALTHZ_MODES),
            allowed_hosts=_allowed_hosts(get("ALLOWED_HOSTS"), _origins(get("CORS_ORIGINS"))),
            history_size=_count("HISTORY_SIZE", get("HISTORY_SIZE")),
            history_ttl=_positive("HISTORY_TTL", get("HISTORY_TTL")),
            history_max_bytes=_whole("HISTORY_MAX_BYTES", get("HISTORY_MAX_BYTES")),
            idempotency_window=_positive("IDEMPOTENCY_WINDOW", get("IDEMPOTENCY_WINDOW")),
            idempotency_max_ids=_whole("IDEMPOTENCY_MAX_IDS", get("IDEMPOTENCY_MAX_IDS")),
            auth_timeout=_positive("AUTH_TIMEOUT", get("AUTH_TIMEOUT")),
            token_expiry_grace=_positive("TOKEN_EXPIRY_GRACE", get("TOKEN_EXPIRY_GRACE"), allow_zero=True),
            anonymous_sessions=_patterns("ANONYMOUS_SESSIONS", get("ANONYMOUS_SESSIONS")),
            server_only_topics=_patterns("SERVER_ONLY_TOPICS", get("SERVER_ONLY_TOPICS")),
            login_max_failures_per_address=_count("LOGIN_MAX_FAILURES_PER_ADDRESS",
                                                  get("LOGIN_MAX_FAILURES_PER_ADDRESS")),
            login_max_failures_per_user_address=_count("LOGIN_MAX_FAILURES_PER_USER_ADDRESS",
                                                       get("LOGIN_MAX_FAILURES_PER_USER_ADDRESS")),
            login_window=_positive("LOGIN_WINDOW", get("LOGIN_WINDOW"), allow_zero=True),
            login_max_tracked=_whole("LOGIN_MAX_TRACKED", get("LOGIN_MAX_TRACKED")),
            trusted_proxies=_networks("TRUSTED_PROXIES", get("TRUSTED_PROXIES")),
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


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
