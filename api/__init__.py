"""The public face of Cinch: HTTP API, credits, metrics, dashboard and the `cinch` command."""

from ._app import create_app as create_app
from ._config import Config as Config

__all__ = ["Config", "create_app"]
