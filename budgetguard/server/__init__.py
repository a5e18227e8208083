"""An authenticated budget service over HTTP, with a spend dashboard (the ``server`` extra).

``budgetguard serve`` runs it. It speaks LiteLLM's hosted budget protocol
(``/get_budget``, ``/set_budget``) plus ``/update_cost`` and budgetguard's own
``/v1`` routes, behind bearer tokens, on Starlette under uvicorn. Starlette and
uvicorn are imported only when the service is built or started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._body import BadRequest
from ._cli import add_arguments, config_from_args, main, run_from_args
from ._config import READ_TOKEN_ENV, TOKEN_ENV, AccessScope, ServerConfig, Tokens, load_tokens

if TYPE_CHECKING:
    from ._app import create_app
    from ._run import RunningServer, serve, start

__all__ = [
    "READ_TOKEN_ENV",
    "TOKEN_ENV",
    "AccessScope",
    "BadRequest",
    "RunningServer",
    "ServerConfig",
    "Tokens",
    "add_arguments",
    "config_from_args",
    "create_app",
    "load_tokens",
    "main",
    "run_from_args",
    "serve",
    "start",
]

_LAZY = {"create_app": "_app", "RunningServer": "_run", "serve": "_run", "start": "_run"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'budgetguard.server' has no attribute {name!r}")
    from importlib import import_module

    from ..errors import ConfigurationError
    from ._cli import EXTRA_HINT

    try:
        loaded = import_module(f"{__name__}.{module}")
    except ImportError as error:
        if (getattr(error, "name", "") or "").startswith("budgetguard"):
            raise
        raise ConfigurationError(
            f"the budget service needs Starlette and uvicorn ({error}); {EXTRA_HINT}"
        ) from None
    return getattr(loaded, name)
