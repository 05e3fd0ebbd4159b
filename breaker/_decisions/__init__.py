"""The decisions: every breaker operation as steps that yield script calls, written
once without I/O (``engine``, over the process's local view in ``core``), the drivers
that run those steps blocking or awaited (``drive``), and the permit every guard is
built on: acquire, then settle once (``permit``).
"""
