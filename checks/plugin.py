"""pytest plugin (placeholder until the checks land)."""
