"""Data services shared by dataset and model plugins: safe image loading and chat templates.

Both are part of the public API so that a model plugin never imports a dataset plugin (or the
other way round). Pillow and Jinja2 are imported only inside the functions that use them.
"""
