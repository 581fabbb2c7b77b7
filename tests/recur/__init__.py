"""Tests of the Recur client package: errors, client, retry policy."""
