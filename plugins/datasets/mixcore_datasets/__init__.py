"""mixcore built-in plugin package. Importing it is cheap: heavy modules load inside hooks.

The data library (``chatml``, ``images``, ``templates``, ``synthetic``, ``scoring``) is imported
explicitly by its users; none of its modules import Paddle, and Pillow, NumPy and Jinja2 are
imported inside the functions that need them.
"""
