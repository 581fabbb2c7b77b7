"""Intake: what a merchant sends, checked before anything touches Redis.

Owns the event model and its validation (`events`: an event time carries a zone and is at most
the signature tolerance ahead) and Standard Webhooks signatures (`signatures`). The HTTP route
is `web/intake.py`; the accept script that records an event is the pipeline's pending store.

May import: the top-level foundation (settings, logging, redis_keys) and `recur.models` (the
limits Recur puts on names and external ids). Nothing of the pipeline or above.
"""
