"""Name the distribution that installs ``budgetguard``, for every install hint.

The import name is ``budgetguard``; the package index's ``budgetguard`` is an
unrelated project, so this one is published as ``budgetguard-llm``. Every
message that tells a user what to install is built here, so that none of
them can send users to the other project.
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "EXTRAS", "install_hint"]

#: The name to ``pip install``; the import name stays ``budgetguard``.
DISTRIBUTION = "budgetguard-llm"

#: The extras ``pyproject.toml`` defines for users (a test keeps the two equal).
EXTRAS = ("postgres", "redis", "server", "tokens")


def install_hint(extra: str | None = None) -> str:
    """Return the ``pip install`` command for the distribution, or for one of its extras."""
    if extra is None:
        return f"pip install {DISTRIBUTION}"
    if extra not in EXTRAS:
        raise ValueError(f"no extra {extra!r}; the extras are {', '.join(EXTRAS)}")
    return f"pip install '{DISTRIBUTION}[{extra}]'"
