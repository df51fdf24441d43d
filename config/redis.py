"""Every Redis connection of the service — gateway, workers, probes, Celery broker — built from one URL format.

``ASR_REDIS_URL`` and ``ASR_BROKER_URL`` take one of::

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db][?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required…]
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    sentinel://[[user]:password@]host[:port][,host2[:port]…][/db]?master=NAME[&sentinel_password=…]

``user:password`` is the AUTH of the Redis that holds the data: ``:password`` for ``requirepass``,
``user:password`` for an ACL user; percent-encode reserved characters (``@`` is ``%40``). For ``sentinel://`` the
hosts are the sentinels (default port 26379); the data node is whichever master they name ``NAME``, asked again on
every new connection, so a failover needs no restart. Sentinels with their own AUTH take ``sentinel_password``
(and ``sentinel_username``).

TLS (``rediss://``, or ``sentinel://…&ssl=true`` for TLS to sentinels and master alike) verifies the server's
certificate by default: ``ssl_cert_reqs`` is ``required``, ``optional`` or ``none`` (kombu's own default for a bare
``rediss://`` broker is ``none``; here it is not), ``ssl_ca_certs`` a CA bundle file, ``ssl_certfile`` and
``ssl_keyfile`` a client certificate, ``ssl_check_hostname`` ``true``/``false`` (default true).

:func:`parse` checks a URL once and raises ``ValueError`` naming what is wrong; :func:`client` builds a redis-py
client from it (for Sentinel a ``master_for`` client: pipelines and pub/sub work on it as on any other);
:func:`celery_broker` the matching Celery broker settings (kombu's ``sentinel://h1;sentinel://h2`` with the master
name in the transport options, ``broker_use_ssl`` for TLS). Building a client connects to nothing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SCHEMES = ("redis", "rediss", "unix", "sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_OPTIONS = {
    "redis": (),
    "rediss": TLS_OPTIONS,
    "unix": ("db",),
    "sentinel": ("master", "sentinel_username", "sentinel_password", "ssl") + TLS_OPTIONS,
}


@dataclass(frozen=True)
class RedisURL:
    """A checked Redis URL. ``hosts`` are the sentinels for ``sentinel``, the one server otherwise."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    path: str = ""  # unix socket
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: dict[str, Any] | None = None  # None: plain TCP; else redis-py's ssl_* keyword arguments

    def auth(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}

    def tls_kwargs(self) -> dict[str, Any]:
        return {} if self.tls is None else {"ssl": True, **self.tls}


def parse(url: str) -> RedisURL:
    """Check ``url`` (see the module docstring); ``ValueError`` says what is wrong without echoing a password."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"Redis URL {redact(url)!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
            " (queue inspection and publishing read Redis lists, so the broker must be Redis too)"
        )
    parts = urlsplit("x://" + rest)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS[scheme]))
    if unknown:
        allowed = ", ".join(_OPTIONS[scheme]) or "none"
        raise ValueError(f"Redis URL {redact(url)!r}: unknown option(s) {', '.join(unknown)} (allowed: {allowed})")
    netloc = parts.netloc
    userinfo, _, hostlist = netloc.rpartition("@")
    username, password = _userinfo(userinfo)
    common: dict[str, Any] = {"scheme": scheme, "username": username, "password": password}
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"Redis URL {redact(url)!r}: no socket path")
        return RedisURL(path=unquote(parts.path), db=_int(options.get("db", "0"), "db", url), **common)
    db = _int(parts.path.strip("/") or "0", "db", url)
    default_port = DEFAULT_SENTINEL_PORT if scheme == "sentinel" else DEFAULT_PORT
    hosts = tuple(_hostport(item, default_port, url) for item in hostlist.split(","))
    tls = _tls(options, url) if scheme == "rediss" or _flag(options.get("ssl", "false"), "ssl", url) else None
    if scheme != "sentinel":
        if len(hosts) != 1:
            raise ValueError(f"Redis URL {redact(url)!r}: one host only (several are for sentinel://)")
        return RedisURL(hosts=hosts, db=db, tls=tls, **common)
    if not options.get("master"):
        raise ValueError(f"Redis URL {redact(url)!r}: sentinel:// needs ?master=<name of the monitored master>")
    return RedisURL(
        hosts=hosts,
        db=db,
        tls=tls,
        master=options["master"],
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        **common,
    )


def client(url: str | RedisURL, **options: Any) -> redis.Redis:
    """A redis-py client for ``url``; ``options`` are connection keyword arguments (timeouts, decode_responses).

    Thread-safe (a connection pool). For ``sentinel://`` the pool asks the sentinels for the master's address
    whenever it opens a connection, and drops its connections when that address changed.
    """
    target = parse(url) if isinstance(url, str) else url
    kwargs = {**target.auth(), "db": target.db, **target.tls_kwargs(), **options}
    if target.scheme == "unix":
        return redis.Redis(unix_socket_path=target.path, **kwargs)
    if target.scheme != "sentinel":
        host, port = target.hosts[0]
        return redis.Redis(host=host, port=port, **kwargs)
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, options), **kwargs)
    return sentinel.master_for(target.master)


def celery_broker(url: str, transport_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Celery settings that point the broker at ``url``: ``broker_url``, ``broker_transport_options`` (the given
    ones plus what the URL needs, e.g. Sentinel's ``master_name``) and, for TLS, ``broker_use_ssl``."""
    target = parse(url)
    options = dict(transport_options or {})
    conf: dict[str, Any] = {}
    userinfo = _kombu_userinfo(target)
    if target.scheme == "unix":
        conf["broker_url"] = f"redis+socket://{userinfo}{quote(target.path)}?virtual_host={target.db}"
    elif target.scheme == "sentinel":
        conf["broker_url"] = ";".join(f"sentinel://{userinfo}{_netloc(h, p)}/{target.db}" for h, p in target.hosts)
        options["master_name"] = target.master
        sentinel_kwargs = _sentinel_kwargs(target, {})
        if sentinel_kwargs:  # else kombu gives the sentinels the master's socket timeouts
            options["sentinel_kwargs"] = sentinel_kwargs
    else:
        host, port = target.hosts[0]
        conf["broker_url"] = f"{target.scheme}://{userinfo}{_netloc(host, port)}/{target.db}"
    if target.tls is not None:
        conf["broker_use_ssl"] = dict(target.tls)
    conf["broker_transport_options"] = options
    return conf


def redact(url: str) -> str:
    """``url`` with its passwords (user info and ``sentinel_password``) replaced by ``***``, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon and user else f"***@{hosts}"
    head, q, query = tail.partition("?")
    if q:
        query = "&".join(
            ("sentinel_password=***" if kv.startswith("sentinel_password=") else kv) for kv in query.split("&")
        )
    return f"{scheme}{sep}{netloc}{slash}{head}{q}{query}"


def _sentinel_kwargs(target: RedisURL, options: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their own AUTH, the master's TLS settings and socket timeouts."""
    kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password is not None:
        kwargs.update(username=target.sentinel_username, password=target.sentinel_password)
    return {**kwargs, **target.tls_kwargs()}


def _userinfo(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _kombu_userinfo(target: RedisURL) -> str:
    if target.password is None and target.username is None:
        return ""
    return f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hostport(item: str, default_port: int, url: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"Redis URL {redact(url)!r}: a host is missing")
    return host, _int(port, "port", url) if port else default_port


def _tls(options: dict[str, str], url: str) -> dict[str, Any]:
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"Redis URL {redact(url)!r}: ssl_cert_reqs must be required, optional or none")
    tls: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if options.get(key):
            tls[key] = options[key]
    tls["ssl_check_hostname"] = _flag(options.get("ssl_check_hostname", "true"), "ssl_check_hostname", url)
    if reqs == "none":
        tls["ssl_check_hostname"] = False  # ssl refuses hostname checks without a verified certificate
    return tls


def _flag(value: str, name: str, url: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"Redis URL {redact(url)!r}: {name} must be true or false")
    return lowered in ("true", "1", "yes")


def _int(value: str, name: str, url: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Redis URL {redact(url)!r}: {name} {value!r} is not a number") from None
