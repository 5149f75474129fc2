"""The model toolkit: services every model plugin may use (imports no Paddle at module level)."""
