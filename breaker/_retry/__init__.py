"""Retries: what is retried and when (``rules``, pure), the fleet's retry budget
(``budget``), the runner that drives one operation's steps sync or async (``runner``:
``RetryPolicy`` and ``Retrier``), and what it notes on the outcome it hands back
(``delivery``).
"""
