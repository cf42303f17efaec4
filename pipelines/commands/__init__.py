"""The `retention` commands, one module per area, each imported only when its command runs."""
