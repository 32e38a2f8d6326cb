"""The scale benchmark: one room of many members through nginx, ours against the ceiling."""
