"""pluggy markers for the ``librefang`` project (kept apart so importing them is cheap)."""

import pluggy

PROJECT = "librefang"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
