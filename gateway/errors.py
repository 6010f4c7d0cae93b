"""The gateway's error vocabulary: every failure a client can see, with its code and status.

    GatewayError                      500 internal-error (a bug; details only in the log)
    ├── InvalidKey                    400 invalid-key
    ├── BadRequest                    400 bad-request
    ├── ChecksumMismatch              400 checksum-mismatch
    │   └── ChunkChecksumMismatch     460 checksum-mismatch (tus checksum extension)
    ├── UnsupportedMediaType          415 bad-request
    ├── Unauthorized                  401 unauthorized
    ├── Forbidden                     403 forbidden
    ├── NotFound                      404 not-found
    │   └── Gone                      410 not-found (a resumable upload that expired)
    ├── RequestTimeout                408 bad-request
    ├── Conflict                      409 conflict
    │   ├── OffsetMismatch            409 conflict (a tus chunk for another offset)
    │   └── Locked                    423 conflict (a resumable upload another request holds)
    ├── PreconditionFailed            412 precondition-failed
    ├── TooLarge                      413 too-large
    ├── RangeNotSatisfiable           416 range-not-satisfiable
    ├── BackendError                  502 backend-error
    └── BackendUnavailable            503 backend-unavailable

Storage backends raise these too, so that one handler (`gateway.problems`) turns any of
them into an RFC 9457 response. The message becomes the problem's `detail`: it is written
for the client and never holds a path, a secret or a traceback.
"""

from collections.abc import Mapping

from starlette.requests import ClientDisconnect


class GatewayError(Exception):
    status = 500
    code = "internal-error"
    title: str | None = None  # the status's reason phrase unless set
    default_detail = "The gateway failed to handle the request."

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None):
        self.detail = detail or self.default_detail
        self.headers = dict(headers or {})
        super().__init__(self.detail)


class InvalidKey(GatewayError):
    status, code = 400, "invalid-key"
    default_detail = "The key is not a valid object key."


class BadRequest(GatewayError):
    status, code = 400, "bad-request"
    default_detail = "The request is malformed."


class ChecksumMismatch(GatewayError):
    status, code = 400, "checksum-mismatch"
    default_detail = "The body does not match the checksum sent with it."


class ChunkChecksumMismatch(ChecksumMismatch):
    status = 460
    title = "Checksum Mismatch"
    default_detail = "The chunk does not match its Upload-Checksum; it was discarded."


class UnsupportedMediaType(GatewayError):
    status, code = 415, "bad-request"
    default_detail = "The request body has the wrong Content-Type."


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"
    default_detail = "A valid bearer token is required."


class Forbidden(GatewayError):
    status, code = 403, "forbidden"
    default_detail = "The token does not allow this request."


class NotFound(GatewayError):
    status, code = 404, "not-found"
    default_detail = "No such object."


class Gone(NotFound):
    status = 410
    default_detail = "The upload has expired."


class MethodNotAllowed(GatewayError):
    status, code = 405, "bad-request"
    default_detail = "The method is not allowed on this resource."


class RequestTimeout(GatewayError):
    status, code = 408, "bad-request"
    default_detail = "The client sent the request body too slowly."

    def __init__(self, detail: str | None = None):
        # The rest of the body will not be read: the connection cannot be reused.
        super().__init__(detail, headers={"Connection": "close"})


class Conflict(GatewayError):
    status, code = 409, "conflict"
    default_detail = "The request conflicts with the state of the resource."


class OffsetMismatch(Conflict):
    """A resumable upload's chunk sent for another offset than the upload's own."""

    def __init__(self, offset: int, sent: int):
        # Upload-Offset tells the client where to resume without asking again.
        super().__init__(
            f"The upload's offset is {offset}, not {sent}.",
            headers={"Upload-Offset": str(offset)},
        )


class Locked(Conflict):
    status = 423
    default_detail = "Another request is writing to this upload."


class PreconditionFailed(GatewayError):
    status, code = 412, "precondition-failed"
    default_detail = "A precondition of the request does not hold."


class TooLarge(GatewayError):
    status, code = 413, "too-large"
    default_detail = "The upload is larger than this gateway accepts."


class RangeNotSatisfiable(GatewayError):
    status, code = 416, "range-not-satisfiable"
    default_detail = "The requested range does not overlap the object."

    def __init__(self, size: int):
        super().__init__(headers={"Content-Range": f"bytes */{size}"})
        self.size = size


class BackendError(GatewayError):
    status, code = 502, "backend-error"
    default_detail = "The storage backend failed to handle the request."


class BackendUnavailable(GatewayError):
    status, code = 503, "backend-unavailable"
    default_detail = "The storage backend cannot be reached."


BROKEN_OFF: tuple[type[BaseException], ...] = (ClientDisconnect, ConnectionError, RequestTimeout)
"""A request body that broke off: the client went away or stalled. What it sent before
counts for a resumable upload; any other error keeps nothing of the request."""
