"""The live dashboard: a web page served next to the engine (``enginectl dashboard``,
``enginectl serve --dashboard PORT``).

The server (Starlette on uvicorn, in the caller's asyncio loop) connects to the engine's
NATS server as the read-only ``monitor`` user and hands pages what they draw, with
server-sent events for what changes; the browser never gets a NATS credential. Modules:
``views`` (a study's states and attempts, aggregated per spec step; pure), ``monitor``
(the NATS side), ``hub`` (the coalesced event stream), ``auth`` (the token and CSRF),
``controls`` (cancel and restart once the client password was given), ``files`` (output
tails, contained in the study directory), ``api`` (the endpoints), ``server`` (socket,
token, uvicorn). The page itself is plain JavaScript and SVG under ``static/``.

Nothing is imported here, so that ``engine.dashboard.views`` stays cheap to import.
"""
