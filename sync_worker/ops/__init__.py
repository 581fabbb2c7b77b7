"""Operators' views: what every surface (CLI, admin API, dashboard, `/metrics`) shows.

Owns the status snapshot (`status`: it only reads Redis) and one user's story (`timeline`: the
trace, the pending change, dead letters, the ledger and, on request, Recur's record).

May import: everything below it: the top-level foundation and `runtime`, `recur`, `intake`,
`telemetry`, `pipeline` and `deadletters`. Never `web` or `cli`, which read it.
"""
