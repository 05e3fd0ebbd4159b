"""The gateway as a served process: ``create_app`` (``main``) puts the proxy and the
admin side together, with the two listeners (``listener``), the HTTP layer's bounds
(``connections``), the logging (``logs``), the workers' watch over their supervisor
(``supervisor``) and the demo upstream (``demo``)."""
