"""Node addresses `host[:port]`: validated in this one place and turned into a URL or file name."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from hefl.errors import ConfigError

# DNS names and IPv4 (IPv6 only in brackets): dot-separated labels of letters, digits, '-' and '_',
# none empty and none starting with '-', so that no address reads as '.', '..' or an option
_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Address:
    """A parsed `host[:port]`; an IPv6 host is kept without its brackets."""

    host: str
    port: int | None  # None: the address names no port

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def url_host(self) -> str:
        """The host as a URL writes it: an IPv6 address in brackets."""
        return f"[{self.host}]" if self.is_ipv6 else self.host

    def netloc(self, default_port: int) -> str:
        """`host:port` of a URL, with the default port where the address names none."""
        return f"{self.url_host}:{self.port if self.port is not None else default_port}"

    def url(self, default_port: int, scheme: str = "http") -> str:
        return f"{scheme}://{self.netloc(default_port)}"


def parse_address(text: str, path: str = "address") -> Address:
    """Split `host`, `host:port`, `[ipv6]` or `[ipv6]:port`; else a one-line ConfigError."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{path}: {text!r} is not an address of the form host[:port]")
        _check_ipv6(host, text, path)
        port = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ConfigError(
            f"{path}: {text!r} looks like an IPv6 address: write it in brackets, "
            f"as [addr] or [addr]:port"
        )
    else:
        host, sep, after = text.partition(":")
        port = after if sep else None
        if not _HOST.fullmatch(host):
            raise ConfigError(f"{path}: {text!r} is not an address of the form host[:port]")
    if port is None:
        return Address(host, None)
    if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ConfigError(f"{path}: {text!r} has an invalid port")
    return Address(host, int(port))


def _check_ipv6(host: str, text: str, path: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(
            f"{path}: {text!r} does not hold an IPv6 address in its brackets"
        ) from None
    if "%" in host:
        raise ConfigError(f"{path}: {text!r}: IPv6 zone ids are not supported")


def base_url(node_id: str, default_port: int, path: str = "address") -> str:
    """`http://host:port` of an address (IPv6 in brackets), the default port where it names none."""
    return parse_address(node_id, path).url(default_port)


def check_base_url(url: str, path: str) -> str:
    """A peer's base URL `http://host[:port]`, host[:port] checked as any address (no path, query,
    user or other scheme: nodes send the credential there; a TLS option would take its scheme from
    the config, not from a URL); returned as given."""
    try:
        # urlsplit drops tabs and line breaks, which the URL would keep: refused here
        parts = None if any(c.isspace() or not c.isprintable() for c in url) else urlsplit(url)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme != "http"
        or parts.path
        or parts.query
        or parts.fragment
        or "?" in url
        or "#" in url
    ):
        raise ConfigError(f"{path}: {url!r} is not of the form http://host[:port]")
    parse_address(parts.netloc, path)
    return url


def same_host(a: str, b: str) -> bool:
    """Whether two addresses name the same host, whatever the ports (IPv6 compared as addresses)."""
    return _host_key(parse_address(a).host) == _host_key(parse_address(b).host)


def _host_key(host: str) -> str:
    return ipaddress.IPv6Address(host).compressed if ":" in host else host.lower()


def file_stem(node_id: str) -> str:
    """A node's address as a file name: ':' (not allowed everywhere) becomes '_', brackets go."""
    return node_id.replace("[", "").replace("]", "").replace(":", "_")


def log_name(node_id: str) -> str:
    """File name of a node's log: `10.10.1.1.json`, `127.0.0.1_100.json`, `fe80__1_5000.json`."""
    return file_stem(node_id) + ".json"
