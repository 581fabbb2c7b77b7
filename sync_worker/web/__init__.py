"""The ASGI app: webhook intake, health, metrics, the operator API and the dashboard."""
