"""One error tree for the testbed: every failure a user or a peer can cause has a class here."""

from __future__ import annotations


class HeflError(Exception):
    """Root of every error the testbed raises on purpose; `status_code` is its HTTP answer."""

    status_code = 500


class ConfigError(HeflError, ValueError):
    """A config file or pushed config is malformed; the message names the path."""

    status_code = 400


class ProtocolError(HeflError, ValueError):
    """A message does not fit the protocol: wrong experiment, round, sender, size or content type."""

    status_code = 400


class DuplicateMessage(ProtocolError):
    """The same (experiment, round, sender) arrived twice; it is acknowledged but never added twice."""

    status_code = 409


class NotConfigured(HeflError, RuntimeError):
    """The node has no role yet, or not the role the request needs."""

    status_code = 409


class PeerUnreachable(HeflError, ConnectionError):
    """An outbound call failed after its retries; the message names the peer."""

    status_code = 502


class Unauthorized(HeflError, PermissionError):
    """A state-changing request came without the experiment's credential."""

    status_code = 401
