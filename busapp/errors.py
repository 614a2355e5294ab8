"""The busapp exception tree.

::

    BusappError
    ├── RemoteProcedureCallError        an error reply (has .code, .message, .data)
    │   ├── ParseError                  -32700  body is not JSON
    │   ├── InvalidRequest              -32600  not a JSON-RPC request
    │   ├── MethodNotFound              -32601  no such method
    │   ├── InvalidParams               -32602  missing, extra or unconvertible params
    │   ├── InternalError               -32603  the handler raised something else
    │   ├── Unauthorized                -32001  unsigned, unknown key, bad signature, replayed
    │   ├── Forbidden                   -32002  a valid key the method does not allow
    │   ├── StorageLookupError          -20000  no such record
    │   ├── ContainerManagerError       -20001  (Commissaire's container manager)
    │   └── Conflict                    -20002  a versioned save lost the race
    ├── RequestTimeout (TimeoutError)   no reply in time
    │   └── NoRouteError                no queue is bound to the request's key: no reply will come
    ├── TimeLimitExceeded               raised in a handler past its time limit
    ├── BrokerUnavailable (ConnectionError)  the broker cannot be reached
    ├── AccessRefused (PermissionError)  the broker refused this user an operation (403)
    ├── RequestTooLarge (ValueError)    a message over the Client's max_body, never sent
    ├── ValidationError (ValueError)    a model value broke a rule (busapp.models)
    ├── UnknownModelError (LookupError) no model is declared under that name
    ├── ConfigError (ValueError)        a BUSAPP_* variable holds an unusable value
    ├── MissingExtra (ImportError)      an optional dependency is not installed
    ├── CrashLoopError (RuntimeError)   workers kept dying before they were ready
    └── ControlFlow                     the worker's own branches, never shown to users
        ├── Refused                     a message the gate turned away
        └── Resubscribe                 a connected worker that is deaf: consume again

Error replies are decoded back to these classes by their ``code`` through
:func:`error_class_for`, never by importing a name received over the wire;
an unknown code gives the base :class:`RemoteProcedureCallError`.
"""

from __future__ import annotations

from typing import Any


class BusappError(Exception):
    """Root of every exception busapp raises on purpose."""


class RemoteProcedureCallError(BusappError):
    """A JSON-RPC error: raised by a handler to choose the reply, or by a client on an error reply.

    Args:
        message: Human-readable text, sent as ``error.message``.
        code: JSON-RPC error code; defaults to the class's ``code``.
        data: JSON-serialisable extra information, sent as ``error.data``.
    """

    #: The JSON-RPC error code this class stands for.
    code: int = -32000

    def __init__(self, message: str = "", code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = str(message)
        if code is not None:
            self.code = int(code)
        self.data = data

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code}, data={self.data!r})"

    def __reduce__(self):  # keeps code and data through pickling (multiprocessing)
        return (type(self), (self.message, self.code, self.data))


class ParseError(RemoteProcedureCallError):
    """The request body was not valid JSON (or not text)."""

    code = -32700


class InvalidRequest(RemoteProcedureCallError):
    """The body was JSON but not a JSON-RPC request this service can take."""

    code = -32600


class MethodNotFound(RemoteProcedureCallError):
    """No method of that name is exposed."""

    code = -32601


class InvalidParams(RemoteProcedureCallError):
    """The params were missing, unexpected or of the wrong type."""

    code = -32602


class InternalError(RemoteProcedureCallError):
    """The handler raised an exception that is not a RemoteProcedureCallError."""

    code = -32603


class Unauthorized(RemoteProcedureCallError):
    """The service has a keyring and the request was not signed by one of its keys (or was
    stale or replayed): nothing ran. ``data.key`` names the key id it claimed, if any."""

    code = -32001


class Forbidden(RemoteProcedureCallError):
    """The request was signed with a valid key that this method (or model type) does not
    allow: nothing ran. ``data.key`` names the key id."""

    code = -32002


class StorageLookupError(RemoteProcedureCallError):
    """The storage service has no record for that key."""

    code = -20000


class ContainerManagerError(RemoteProcedureCallError):
    """Commissaire's container manager failed."""

    code = -20001


class Conflict(RemoteProcedureCallError):
    """A save with ``expect_version`` found another version stored: someone else wrote first.

    ``data`` holds ``model_type_name``, ``key``, ``expected_version`` and
    ``version`` (what is stored now; 0 when there is no record). Read the
    record again, reapply the change, and save with the new version.
    """

    code = -20002


class RequestTimeout(BusappError, TimeoutError):
    """No reply arrived within the call's timeout."""


class NoRouteError(RequestTimeout):
    """No queue is bound to a request's routing key: no service is running for it.

    Raised at once by the publish (on Redis and RabbitMQ as on the test client's in-memory
    broker), instead of a :class:`RequestTimeout` after the whole timeout. A subclass of it,
    so code that waits for a service by retrying on RequestTimeout keeps working.
    """


class TimeLimitExceeded(BusappError):
    """Raised inside a handler that ran past its ``time_limit`` (its caller got -32603)."""


class BrokerUnavailable(BusappError, ConnectionError):
    """The message broker could not be reached (or the connection was lost)."""

    #: False when what was being sent never reached the broker (a request *not sent*: safe
    #: to repeat); None when that is not known (it *may have been delivered*).
    sent: bool | None = None


class RequestTooLarge(BusappError, ValueError):
    """A message over its Client's ``max_body``: refused before it was sent (``size`` and
    ``limit`` say by how much)."""

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class AccessRefused(BusappError, PermissionError):
    """The broker refused the operation to this user (RabbitMQ 403 ACCESS_REFUSED: a missing
    configure/write/read permission, or a topic permission). Retrying does not help."""


class ValidationError(BusappError, ValueError):
    """A model value broke a rule. ``field`` and ``rule`` say which and why."""

    def __init__(self, model: str, field: str | None, rule: str) -> None:
        self.model, self.field, self.rule = model, field, rule
        where = f"{model}.{field}" if field else model
        super().__init__(f"{where}: {rule}")

    def __reduce__(self):  # keeps model, field and rule through pickling
        return (type(self), (self.model, self.field, self.rule))


class UnknownModelError(BusappError, LookupError):
    """No model is declared under that name."""


class ConfigError(BusappError, ValueError):
    """A ``BUSAPP_*`` environment variable holds a value busapp cannot use; ``setting``
    names the variable."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class MissingExtra(BusappError, ImportError):
    """An optional dependency is not installed (the message says which extra installs it)."""


class CrashLoopError(BusappError, RuntimeError):
    """Workers kept failing before they were ever ready; the manager stopped restarting them."""


class ControlFlow(BusappError):
    """Base of the exceptions a worker uses to steer itself; never an error of the user's."""


class Refused(ControlFlow):
    """A message the gate turns away (never a handler's error).

    ``error`` is what the caller is told; ``answer`` is False when nobody is to be told
    (a replay: the original was answered; an unsigned control request); ``sign_with`` is
    the key the answer is signed with (None: unsigned).
    """

    def __init__(self, error: RemoteProcedureCallError, *, answer: bool = True,
                 sign_with: Any = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.answer = answer
        self.sign_with = sign_with


class Resubscribe(ControlFlow):
    """The worker is connected but deaf (bindings lost, or messages wait unseen): consume
    again."""


_BY_CODE: dict[int, type[RemoteProcedureCallError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        Unauthorized,
        Forbidden,
        StorageLookupError,
        ContainerManagerError,
        Conflict,
    )
}


def summary(cls: type[BaseException]) -> str:
    """The first paragraph of ``cls``'s docstring, on one line (what the class stands for)."""
    paragraph = (cls.__doc__ or cls.__name__).strip().split("\n\n")[0]
    return " ".join(paragraph.replace("``", "").split())


def wire_errors() -> list[type[RemoteProcedureCallError]]:
    """The error classes of the wire's codes, by code (what error replies decode to)."""
    return [_BY_CODE[code] for code in sorted(_BY_CODE, reverse=True)]


def error_class_for(code: Any) -> type[RemoteProcedureCallError]:
    """Return the exception class for a JSON-RPC error ``code`` (the base class if unknown)."""
    try:
        return _BY_CODE.get(int(code), RemoteProcedureCallError)
    except (TypeError, ValueError):
        return RemoteProcedureCallError


def register_error_code(cls: type[RemoteProcedureCallError]) -> type[RemoteProcedureCallError]:
    """Make error replies with ``cls.code`` decode to ``cls`` on the client. Usable as a
    decorator."""
    _BY_CODE[cls.code] = cls
    return cls
