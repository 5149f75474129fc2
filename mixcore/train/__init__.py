"""Assembling and running training. Imports Paddle, so only `mixcore train` loads it."""
