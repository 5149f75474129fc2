"""The pluggy markers for mixcore's hooks. Plugins decorate their functions with ``hookimpl``."""

import pluggy

PROJECT = "mixcore"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
