"""What can go wrong talking to LND, as exceptions a daemon can act on.

lnd returns most failures, including every macaroon refusal, as gRPC status UNKNOWN with
a Go error string, so the type is chosen from the status code first and the text second.
"""

from __future__ import annotations

import grpc


class LightningError(Exception):
    """Base of every error from the node or about a request to it."""

    def __init__(self, message: str, *, code: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code


class Unreachable(LightningError):
    """No answer in time or no connection (node down, network, TLS refusal); retrying may help."""


class PermissionDenied(LightningError):
    """The macaroon does not allow this (missing permission, expired, wrong IP, wrong node)."""


class PaymentFailed(LightningError):
    """The payment reached a final FAILED state; ``reason`` is the lnrpc.PaymentFailureReason name."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or f"payment failed: {reason}", code="FAILED")
        self.reason = reason


class AlreadyPaid(LightningError):
    """lnd refused to pay again: already paid, in flight, or a payment to this hash exists."""


class NotFound(LightningError):
    """No such invoice or payment on the node."""


class InvalidRequest(LightningError, ValueError):
    """lnd (or our own check before sending) rejected the request's content."""


# Substrings of lnd's macaroon refusals (macaroons/service.go, bakery checkers).
_MACAROON_REFUSALS = (
    "permission denied",
    "macaroon has expired",
    "macaroon locked to different ip",
    "signature mismatch",
    "cannot get macaroon",
    "unknown macaroon version",
    "expected 1 macaroon",
    "caveat not recognized",
    "unknown permissions required for method",
    "no middleware registered",
    "verification failed",
)

_BY_CODE = {
    grpc.StatusCode.UNAVAILABLE: Unreachable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unreachable,
    grpc.StatusCode.CANCELLED: Unreachable,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyPaid,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.UNIMPLEMENTED: InvalidRequest,
}


def from_rpc_error(error: grpc.RpcError, method: str = "") -> LightningError:
    """The typed error for a failed gRPC call."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else None) or ""
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    text = f"{method}: {details}" if method else details
    if code == grpc.StatusCode.UNKNOWN:
        lowered = details.lower()
        refused = lowered == "invalid id" or any(s in lowered for s in _MACAROON_REFUSALS)
        kind = PermissionDenied if refused else InvalidRequest
    else:
        kind = _BY_CODE.get(code, LightningError)
    return kind(text or name, code=name)
