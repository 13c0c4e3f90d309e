"""The domain error tree. Statuses live in `bridge.http.errors`, nowhere else.

    BridgeError
    ├── InvalidRequest            bad input the client can fix
    │   ├── InvalidModelName
    │   ├── CapabilityMissing     the model cannot do what was asked (tools, thinking, ...)
    │   └── ContextLengthExceeded
    ├── ModelNotFound             no model by that name (never silently another model)
    ├── InvalidOption             an option of the wrong type (Ollama answers these with 500)
    ├── ModelLoadFailed           the file is missing, corrupt or cannot be loaded
    ├── QueueFull                 too many requests waiting
    ├── RequestCanceled           the client went away while waiting
    ├── EngineFailed              the engine failed while running a request
    ├── UpstreamError             an upstream server failed
    │   ├── UpstreamTimeout       it went silent for longer than its read_timeout
    │   ├── UpstreamUnavailable   no upstream that serves the model can be reached
    │   └── UpstreamProtocolError its reply could not be read (malformed or cut-off stream)
    ├── BlobNotFound              no blob with that digest in the store
    ├── TransferFailed            a pull or push failed (registry, network, digest mismatch)
    └── CreateFailed              a create failed for a reason other than bad input

Each error carries the message text Ollama would send; the HTTP layer picks the status and the
body shape for the protocol in use.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error bridge reports to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(BridgeError):
    """The request is malformed or asks for something impossible (400)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidModelName(InvalidRequest):
    def __init__(self, message: str = "invalid model name") -> None:
        super().__init__(message, param="model")


class CapabilityMissing(InvalidRequest):
    pass


class ContextLengthExceeded(InvalidRequest):
    pass


class ModelNotFound(BridgeError):
    pass


class InvalidOption(BridgeError):
    pass


class ModelLoadFailed(BridgeError):
    pass


class QueueFull(BridgeError):
    def __init__(
        self,
        message: str = "server busy, please try again.  maximum pending requests exceeded",
        *,
        retry_after: int = 1,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestCanceled(BridgeError):
    def __init__(self, message: str = "request canceled") -> None:
        super().__init__(message)


class EngineFailed(BridgeError):
    pass


class UpstreamError(BridgeError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class BlobNotFound(BridgeError):
    pass


class TransferFailed(BridgeError):
    """A pull or push failed; the message is Ollama's (Ollama answers these with 500)."""


class CreateFailed(BridgeError):
    """A create failed after its input was accepted (Ollama answers these with 500)."""
