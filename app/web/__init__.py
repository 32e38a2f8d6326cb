"""The web page: chat rooms, presence, notifications and live updates in a browser."""
