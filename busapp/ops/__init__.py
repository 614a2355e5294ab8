"""Operating services: ``busapp status`` and ``probe`` (:mod:`~busapp.ops.status`),
Prometheus metrics (:mod:`~busapp.ops.metrics`) and the OpenRPC document
(:mod:`~busapp.ops.openrpc`). The worker reaches these through hooks it is handed."""
