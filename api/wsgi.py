"""WSGI entry point for gunicorn: ``gunicorn 'api.wsgi:app'``."""
from retention.api import create_app

app = create_app()
