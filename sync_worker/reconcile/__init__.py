"""Reconciliation: the nightly pass that finds what drifted in Recur and queues it again.

Owns the pass (`reconciler`), the comparison (`drift`, the reference model, and `page_script`,
the Lua script that compares each page with the ledger inside Redis), paging ahead on a thread
(`page_stream`) and the lock that keeps a run single (`run_lock`).

May import: the top-level foundation and `runtime`, `recur`, `telemetry`, `pipeline` and
`deadletters`. Nothing imports it but `tasks`, `cli` and the benchmarks.
"""
