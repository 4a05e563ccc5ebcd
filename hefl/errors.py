"""One error tree for the testbed: every failure a user or a peer can cause has a class here."""

from __future__ import annotations


class HeflError(Exception):
    """Root of every error the testbed raises on purpose; `status_code` is its HTTP answer."""

    status_code = 500


class ConfigError(HeflError, ValueError):
    """A config file or pushed config is malformed; the message names the path."""

    status_code = 400


class ProtocolError(HeflError, ValueError):
    """A message breaks the protocol: wrong experiment, round, sender, size or content type."""

    status_code = 400


class DuplicateMessage(ProtocolError):
    """The same (experiment, round, sender) arrived twice; it is acknowledged, never added twice."""

    status_code = 409


class OutOfWindow(ProtocolError):
    """A message for a round this node does not take now (not yet open, or already closed): refused
    with 422, which a sender must not take as delivered (unlike 409)."""

    status_code = 422


class PeerRefused(ProtocolError):
    """A peer answered an outbound call with a 4xx (not 409); `status` is that code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def restarted(node: str) -> str:
    """What is said of a node that answers with no experiment in the middle of one."""
    return f"{node} answers as an unconfigured node: it restarted and lost its experiment"


class PeerRestarted(PeerRefused):
    """A peer of a running experiment answers as a node with no experiment (it has no endpoint
    for the message): its process restarted and lost its state. `headline` names it first."""

    def __init__(self, peer: str, where: str, status: int) -> None:
        super().__init__(f"{peer} refused {where} with {status}: it has no experiment", status)
        self.peer = peer
        self.headline = restarted(peer)


class NotFound(HeflError, LookupError):
    """What a request asks for does not exist here (no log of that experiment on this node)."""

    status_code = 404


class ExperimentFailed(HeflError, RuntimeError):
    """A node reported a failure, stopped answering, or a round ran past its deadline."""


class PeerUnreachable(HeflError, ConnectionError):
    """An outbound call failed after its retries; the message names the peer. `silent`: the peer
    took the connection but did not answer in time (hung or paused), rather than refusing it."""

    status_code = 502

    def __init__(
        self, message: str, silent: bool = False, peer: str = "", answered: int = 0
    ) -> None:
        super().__init__(message)
        self.silent = silent
        self.peer = peer  # the node that could not be reached ("": not one of the experiment's)
        # answered: the 5xx status of its last answer (0: it gave none)
        self.headline = (
            f"{peer} answers with errors ({answered})"
            if answered
            else f"{peer} {'does not answer' if silent else 'is unreachable'}"
        )


class Unauthorized(HeflError, PermissionError):
    """A state-changing request came without the experiment's credential."""

    status_code = 401
