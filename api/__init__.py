"""The Flask JSON API; build it with ``create_app``."""
from retention.api.app import create_app

__all__ = ["create_app"]
