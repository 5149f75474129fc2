"""mixcore built-in plugin package. Importing it is cheap: heavy modules load inside hooks."""
