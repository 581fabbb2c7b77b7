"""The pipeline: from an accepted event to a PATCH Recur applied.

Owns the pending store and all its transitions in Lua (`pending`, its records in `records`), the
applied state per user (`ledger`), the shared rate limit, 429 cool-down and auth pause (`flow`),
the circuit breaker (`breaker`), claiming due users and publishing them in batches (`dispatch`)
and one batch's sync (`sync`): what ends a claim unapplied (`outcomes`) and the reads of Recur
it makes (`read_back`).

May import: the top-level foundation, `recur`, `intake`, `telemetry`, and `deadletters.dlq` for
the record a refused change leaves. `dispatch` alone, the loop a worker runs, is handed the
process's `Runtime` and reads the retry count of `ops.status`.
"""
