"""The reconnect-storm drill: N chat clients, one WebSocket process killed or drained, and how
long its clients take to resume (issue 32; `make rehearse-storm`)."""
