"""The `paretoserve` command."""
