"""The reference chapter's stock Channels setup, as a tiny Django project
(the benchmark's baseline).

Settings, `asgi.py` with `AuthMiddlewareStack`, the chapter's basic `ChatConsumer`
(`AsyncWebsocketConsumer`, a group per room, save via `database_sync_to_async`, then
`group_send`, `json.dumps` in the handler) and the default `RedisChannelLayer` configured
with `{"hosts": [url]}` only.
"""
