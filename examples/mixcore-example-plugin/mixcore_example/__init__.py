"""An example third-party mixcore plugin, and the template for writing one."""
