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


class ForeignNode(PeerRefused):
    """A node refused the controller's config push with 401: it checks another credential than the
    controller's (or the controller sent none). On a shared machine that is most often another
    user's node on the same port, a port clash. `state` and `role` are what anyone may read of it
    (its open /health; "" when it said nothing): idle, or serving another experiment, which a push
    with its own credential would take over."""

    def __init__(
        self, node: str, url: str, port: int, sent: bool, state: str = "", role: str = ""
    ) -> None:
        mine = "one of yours started with another keys/token"
        if not sent:
            held, mine = "it checks a credential and this controller sent none", "one of yours"
        elif state == "idle":
            held = "it holds another credential and is idle"
        elif state:
            a = "an" if role[:1] in ("a", "e", "i", "o", "u") else "a"
            what = f"{state}, {a} {role}" if role else state
            held = f"it holds another credential and serves another experiment ({what})"
            mine = "one of yours still in a run started with another keys/token"
        else:
            held = "it holds another credential"
        move = "give your nodes a port of their own (network.port, or HOST:PORT in the config)"
        if state and state != "idle":
            todo = f"{move}; its own keys/token would take it from that experiment"
        elif not sent:
            todo = f"{move}, or give this controller the nodes' keys/token (deploy/keys.yml)"
        else:
            todo = (
                f"{move}, or push with its keys/token ($HEFL_TOKEN) if you may, or restart it "
                "with yours if it is yours (deploy/keys.yml)"
            )
        super().__init__(
            f"{node} ({url}) refused its config with 401: {held}: another user's node on port "
            f"{port} (a port clash on a shared machine), or {mine}; {todo}",
            401,
        )
        self.peer = node
        self.state = state


class TooLarge(ProtocolError):
    """A body longer than any this node takes (found as it is read)."""

    status_code = 413


class NoSpace(HeflError, OSError):
    """A body cannot be spooled: the node's disk is full (or refuses the write)."""

    status_code = 507


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
