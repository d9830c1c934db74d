"""LibreFang example plugin (a template: copy it, rename ``example``, keep the shape)."""
