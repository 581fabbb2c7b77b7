"""The local dev stack behind `sync-worker dev`: every process of recur-sync in one terminal.

`supervisor.py` runs child processes (prefixed output, ordered stop, no orphans),
`credentials.py` keeps the generated secrets, and `stack.py` decides what to run and starts it.
"""
