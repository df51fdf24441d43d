"""The service's exception tree. Everything the service raises on purpose derives from :class:`ServiceError`.

::

    ServiceError                      code, message; ``to_client()`` is what a WebSocket client is sent
    ├── ProtocolError                 the client broke the protocol (app.protocol); carries a close code
    ├── AdmissionRefused              no capacity for a new session (gateway answers HTTP 503)
    ├── BackendUnavailable            Redis or the broker cannot be reached
    ├── MediaError (app.media)        an uploaded file that cannot be transcribed; carries its HTTP status
    └── EngineError                   worker side
        ├── ModelLoadError            the FunASR model could not be loaded
        ├── StreamStateLost           a chunk arrived for a stream whose model state this worker lacks
        └── RecognitionFailed         the recognizer raised on a chunk (the original error is chained)

Third-party errors (redis, celery, torch) are translated into these at the module that calls them.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of the service's errors. ``code`` is a stable snake_case identifier clients can switch on."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_client(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


class ProtocolError(ServiceError):
    """The client sent something the protocol does not allow.

    ``close_code`` is the WebSocket close code to end the session with, or None when the session can go on
    (the offending message is ignored and the client is told why).
    """

    code = "protocol_error"

    def __init__(self, message: str, *, code: str | None = None, close_code: int | None = 1008) -> None:
        super().__init__(message, code=code)
        self.close_code = close_code


class AdmissionRefused(ServiceError):
    """A new session cannot be admitted now; ``retry_after`` is a hint in seconds."""

    code = "overloaded"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class BackendUnavailable(ServiceError):
    """Redis or the Celery broker is unreachable."""

    code = "backend_unavailable"


class EngineError(ServiceError):
    """Something went wrong in a worker's recognition engine."""

    code = "engine_error"


class ModelLoadError(EngineError):
    code = "model_load_failed"


class StreamStateLost(EngineError):
    """A worker got a chunk for a stream it has no model state for (it restarted, or the stream idled out)."""

    code = "stream_state_lost"


class RecognitionFailed(EngineError):
    """The recognizer raised while processing one stream's chunk."""

    code = "recognition_failed"


class ModelMissing(EngineError):
    """A chunk or sentence needs a model this worker has not loaded (a mode's VAD or offline model)."""

    code = "model_missing"
