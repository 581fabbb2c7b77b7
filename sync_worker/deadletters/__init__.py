"""Dead letters: the changes Recur refused, kept for an operator to fix and replay.

Owns the queue and its layout (`dlq`), edits of a queued change before its replay
(`replay_edit`) and the Recur view of an entry that `dlq show` and the dead-letter page print
(`triage`).

May import: the top-level foundation, `recur`, `intake`, `telemetry`, and the pipeline's
pending store, ledger and flow control (a replay makes the change pending again).
"""
