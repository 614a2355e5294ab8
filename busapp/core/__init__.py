"""The core: what busapp does without I/O.

Registration (:mod:`~busapp.core.app`, :mod:`~busapp.core.router`,
:mod:`~busapp.core.scaffold`), the JSON-RPC wire (:mod:`~busapp.core.wire`), dispatch
and parameter conversion (:mod:`~busapp.core.dispatch`, :mod:`~busapp.core.convert`),
dependencies, middleware and lifespan, the pure stages of the message pipeline
(:mod:`~busapp.core.pipeline`) and trace-context propagation (:mod:`~busapp.core.tracing`).

Nothing here opens a connection, a file or a thread, or imports kombu or click; a test
pins it (``tests/test_layers.py``).
"""
