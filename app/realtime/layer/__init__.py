"""Everything kept in Redis: the channel layer, its retries, the shared store and rate limits."""
