"""Runnable examples of the library: ``trip_and_recover`` (a script) and ``fastapi_app``
(an ASGI app, ``uvicorn examples.fastapi_app:app``)."""
