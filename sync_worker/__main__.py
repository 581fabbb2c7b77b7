"""`python -m sync_worker` runs the `sync-worker` command."""

from sync_worker.cli import main

main()
