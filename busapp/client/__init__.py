"""Calling services: the blocking :class:`~busapp.client.sync.Client` and the asyncio
:class:`~busapp.client.aio.AsyncClient`, over the transport seam."""
