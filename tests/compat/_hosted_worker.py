"""Charge one user N times through a budget server (run as a separate process by the tests)."""

from __future__ import annotations

import sys

from budgetguard import BudgetManager

USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
RESPONSE = {"object": "chat.completion", "model": "gpt-3.5-turbo", "choices": [], "usage": USAGE}


def main() -> None:
    """Charge ``user`` ``count`` times in ``project`` on the server at ``url``."""
    url, project, user, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    budget_manager = BudgetManager(project, client_type="hosted", api_base=url)
    for _ in range(count):
        budget_manager.update_cost(user=user, completion_obj=RESPONSE)


if __name__ == "__main__":
    main()
