"""Telemetry: what every process writes down about its work, for operators to read.

Owns the counters shared by all processes in one Redis hash (`stats`), the per-minute counters
and gauges behind the charts (`history`), each user's capped trace (`trace`, written by the
accept script and, buffered, by the stats flush) and operational webhooks, emitted to a capped
outbox and delivered signed with retries (`ops_webhooks`).

May import: the top-level foundation, `recur` and `intake`. Never the pipeline or anything above
it: the pipeline writes here, and `ops`, `web` and `cli` read it.
"""
