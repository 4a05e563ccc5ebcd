"""Addresses `host[:port]`: parsing, IPv6 in brackets, base URLs, same-host matching, log names."""

from __future__ import annotations

import pytest

from hefl.address import (
    Address,
    base_url,
    check_base_url,
    file_stem,
    log_name,
    parse_address,
    same_host,
)
from hefl.errors import ConfigError

FORM = "is not an address of the form host"
BAD_PORT = "has an invalid port"
BRACKETS = "write it in brackets"

GOOD = [
    ("10.10.1.1", "10.10.1.1", None),
    ("127.0.0.1:100", "127.0.0.1", 100),
    ("node-3.cluster_a.local:65535", "node-3.cluster_a.local", 65535),
    ("localhost:1", "localhost", 1),
    ("[::1]", "::1", None),
    ("[::1]:5000", "::1", 5000),
    ("[fe80::1]", "fe80::1", None),
    ("[2001:db8::7]:8080", "2001:db8::7", 8080),
]


@pytest.mark.parametrize(("text", "host", "port"), GOOD)
def test_good_addresses_split_into_host_and_port(text: str, host: str, port: int | None) -> None:
    assert parse_address(text) == Address(host, port)


BAD = [
    ("", FORM),
    (":5000", FORM),
    ("host:", BAD_PORT),
    ("host:0", BAD_PORT),
    ("host:65536", BAD_PORT),
    ("host:123456", BAD_PORT),
    ("host:50a", BAD_PORT),
    ("host:-1", BAD_PORT),
    ("host: 50", BAD_PORT),
    ("[::1]:", BAD_PORT),
    ("[::1]:99999", BAD_PORT),
    ("::1", BRACKETS),
    ("fe80::1", BRACKETS),
    ("fe80::1:5000", BRACKETS),
    ("a:b:c", BRACKETS),
    ("my host", FORM),
    (" host", FORM),
    ("host\n", FORM),
    ("host/path", FORM),
    ("user@host", FORM),
    ("host?x", FORM),
    ("host#x", FORM),
    ("[::1", FORM),
    ("[::1]5000", FORM),
    ("[host]:5000", "does not hold an IPv6 address"),
    ("[10.0.0.1]", "does not hold an IPv6 address"),
    ("[fe80::1%eth0]", "zone ids are not supported"),
    ("ho[st", FORM),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_addresses_are_one_line_errors_naming_the_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_address(text, "others['x']")
    assert str(err.value).startswith(f"others['x']: {text!r}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("10.10.1.1", "http://10.10.1.1:5000"),
        ("10.10.1.1:6000", "http://10.10.1.1:6000"),
        ("[::1]", "http://[::1]:5000"),
        ("[fe80::1]:6000", "http://[fe80::1]:6000"),
    ],
)
def test_base_url_uses_the_default_port_and_brackets_ipv6(text: str, url: str) -> None:
    assert base_url(text, 5000) == url


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:5000", "http://node3:443", "http://[::1]:5000", "http://h"]
)
def test_base_urls_accepted(url: str) -> None:
    assert check_base_url(url, "push.endpoints['x']") == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h:1", "is not of the form http://host"),
        ("https://node3:443", "is not of the form http://host"),  # no TLS from an address
        ("http://..:1", FORM),
        ("127.0.0.1:5000", "is not of the form http://host"),
        ("http://h:1/", "is not of the form http://host"),
        ("http://h:1/api", "is not of the form http://host"),
        ("http://h:1?x=1", "is not of the form http://host"),
        ("http://h:1#top", "is not of the form http://host"),
        ("http://[::1", "is not of the form http://host"),
        ("http://", FORM),
        ("http://u@h:1", FORM),
        ("http://h:0", BAD_PORT),
        ("http://::1:5000", BRACKETS),
    ],
)
def test_bad_base_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        check_base_url(url, "push.endpoints['x']")
    assert str(err.value).startswith("push.endpoints['x']: ")


@pytest.mark.parametrize(
    ("node", "name"),
    [
        ("10.10.1.1", "10.10.1.1.json"),  # today's names, unchanged
        ("127.0.0.1:100", "127.0.0.1_100.json"),
        ("[::1]", "__1.json"),
        ("[::1]:5000", "__1_5000.json"),
        ("[fe80::1]:5000", "fe80__1_5000.json"),
    ],
)
def test_log_names_are_file_safe(node: str, name: str) -> None:
    assert log_name(node) == name
    assert file_stem(node) + ".json" == name
    assert not set(name) & set(":[]/\\")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("10.10.1.3", "10.10.1.3:5003", True),
        ("10.10.1.3:5000", "10.10.1.3:5003", True),
        ("10.10.1.3", "10.10.1.30", False),
        ("Node3:1", "node3:2", True),
        ("[::1]:5000", "[0:0::1]", True),
        ("[::1]", "[::2]", False),
        ("[::1]", "127.0.0.1", False),
    ],
)
def test_same_host_ignores_ports(a: str, b: str, same: bool) -> None:
    assert same_host(a, b) is same
    assert same_host(b, a) is same
