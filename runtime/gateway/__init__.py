"""The FastAPI gateway: sync invoke, the AWS Invoke API, function URLs, and the admin API."""

from .app import create_app

__all__ = ["create_app"]
