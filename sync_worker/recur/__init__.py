"""The Recur Customers API: client, models, errors and retry policy."""
