"""Every example of LiteLLM's "Budget Manager" page, with ``litellm.completion`` replaced.

Each test is the page's code as written, except that ``completion`` is a
function returning an OpenAI ChatCompletion (see conftest), guarded where the
example relies on LiteLLM guarding it, and ``api_base`` names a real server.
"""

from __future__ import annotations

import inspect
import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

import budgetguard
import budgetguard as bg
from budgetguard import BudgetExceededError, BudgetManager, ConfigurationError
from budgetguard.compat.server import BudgetServer
from budgetguard.pricing import cost_of
from budgetguard.usage import extract_usage

from . import conftest


def test_quick_start_max_budget() -> None:
    """litellm.max_budget: the first call runs, the running total shows, the next call raises."""
    guard = bg.BudgetGuard(metrics=False)
    completion = guard.budgeted(conftest.completion)  # litellm guards its completion()

    os.environ.setdefault("OPENAI_API_KEY", "your-api-key")
    budgetguard.max_budget = 0.001  # sets a max budget of $0.001

    messages = [{"role": "user", "content": "Hey, how's it going"}]
    response = completion(model="gpt-4", messages=messages)
    first = cost_of(extract_usage(response)).total  # type: ignore[arg-type]
    assert budgetguard._current_cost == first > Decimal("0.001")
    with pytest.raises(BudgetExceededError) as refused:
        completion(model="gpt-4", messages=messages)
    assert refused.value.current_cost == first
    assert refused.value.max_budget == Decimal("0.001")


def test_user_based_rate_limiting() -> None:
    """The quick start: a new user gets a budget, a call fits, its cost is recorded."""
    completion = conftest.completion
    budget_manager = BudgetManager(project_name="test_project")

    user = "1234"

    # create a budget if new user user
    if not budget_manager.is_valid_user(user):
        budget_manager.create_budget(total_budget=10, user=user)

    # check if a given call can be made
    if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
        response = completion(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hey, how's it going?"}]
        )
        budget_manager.update_cost(completion_obj=response, user=user)
    else:
        response = "Sorry - no budget!"

    expected = cost_of(extract_usage(response)).total  # type: ignore[arg-type]
    assert expected > 0
    assert budget_manager.get_current_cost(user) == expected
    assert budget_manager.get_model_cost(user) == {"gpt-3.5-turbo": expected}


def test_user_over_budget_gets_no_call() -> None:
    """The quick start's else branch: a user whose spend passed the budget gets no call."""
    budget_manager = BudgetManager(project_name="test_project")
    user = "1234"
    budget_manager.create_budget(total_budget=0.0001, user=user)
    budget_manager.update_cost(user=user, model="gpt-4", input_text="x" * 400, output_text="y")

    if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
        response = conftest.completion(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hey, how's it going?"}]
        )
    else:
        response = "Sorry - no budget!"
    assert response == "Sorry - no budget!"


def test_text_input_output() -> None:
    """Example "use with Text Input / Output": the cost is priced from the texts' tokens."""
    budget_manager = BudgetManager(project_name="test_project")
    user = "12345"
    budget_manager.create_budget(total_budget=10, user=user, duration="daily")

    input_text = "hello world"
    output_text = "it's a sunny day in san francisco"
    model = "gpt-3.5-turbo"

    budget_manager.update_cost(
        user=user, model=model, input_text=input_text, output_text=output_text
    )
    current = budget_manager.get_current_cost(user)
    # 9 input tokens (chat overhead included), 9 output, at $0.5 / $1.5 per million.
    assert current == Decimal(9 * 0.5 + 9 * 1.5) / 1_000_000 == Decimal("0.000018")


def test_model_breakdown_per_user() -> None:
    """Example "get model-breakdown per user": ``{model: cost}`` for the models the user used."""
    budget_manager = BudgetManager(project_name="test_project")
    user = "1234"
    budget_manager.create_budget(total_budget=10, user=user)
    response = conftest.completion(
        model="gpt-3.5-turbo-0613", messages=[{"role": "user", "content": "Hey"}]
    )
    budget_manager.update_cost(completion_obj=response, user=user)

    breakdown = budget_manager.get_model_cost(user=user)
    assert list(breakdown) == ["gpt-3.5-turbo-0613"]
    assert breakdown["gpt-3.5-turbo-0613"] == budget_manager.get_current_cost(user)


def test_save_budget_to_disk() -> None:
    """Example "save budget to disk": ``save_data()`` writes the file and reports success."""
    budget_manager = BudgetManager(project_name="test_project")
    budget_manager.create_budget(total_budget=10, user="1234", duration="monthly")
    assert budget_manager.save_data() == {"status": "success"}
    saved = json.loads(Path("test_project_user_cost.json").read_text())
    assert saved["1234"]["total_budget"] == 10
    assert saved["1234"]["current_cost"] == 0


def test_litellm_hosted_api_needs_an_address() -> None:
    """Example "LiteLLM API": without api_base there is no server to use, and the error says so."""
    with pytest.raises(ConfigurationError, match="api_base"):
        BudgetManager(project_name="<my-unique-project>", client_type="hosted")


def test_self_hosted_complete_code(server: BudgetServer) -> None:
    """Example "Self-hosted": the complete code runs against ``budgetguard serve``."""
    completion = conftest.completion
    budget_manager = BudgetManager(
        project_name="<my-unique-project>", client_type="hosted", api_base=server.url
    )

    user = "1234"

    # create a budget if new user user
    if not budget_manager.is_valid_user(user):
        budget_manager.create_budget(total_budget=10, user=user, duration="monthly")

    # check if a given call can be made
    if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
        response = completion(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hey, how's it going?"}]
        )
        budget_manager.update_cost(completion_obj=response, user=user)
    else:
        response = "Sorry - no budget!"

    expected = cost_of(extract_usage(response)).total  # type: ignore[arg-type]
    assert budget_manager.get_current_cost(user) == expected
    assert budget_manager.save_data() == {"status": "success"}  # "saved to self-hosted db"
    again = BudgetManager(
        project_name="<my-unique-project>", client_type="hosted", api_base=server.url
    )
    assert again.get_current_cost(user) == expected
    assert again.user_dict[user]["duration"] in (28, 29, 30, 31)


# LiteLLM's "Budget Manager Class" section: every public function, by name and parameters.
LITELLM_API = {
    "__init__": ["self", "project_name", "client_type", "api_base", "headers"],
    "create_budget": ["self", "total_budget", "user", "duration", "created_at"],
    "projected_cost": ["self", "model", "messages", "user"],
    "get_total_budget": ["self", "user"],
    "update_cost": ["self", "user", "completion_obj", "model", "input_text", "output_text"],
    "get_current_cost": ["self", "user"],
    "get_model_cost": ["self", "user"],
    "is_valid_user": ["self", "user"],
    "get_users": ["self"],
    "reset_cost": ["self", "user"],
    "reset_on_duration": ["self", "user"],
    "update_budget_all_users": ["self"],
    "save_data": ["self"],
}


@pytest.mark.parametrize("name", sorted(LITELLM_API))
def test_budget_manager_class_signatures(name: str) -> None:
    """Each public function takes LiteLLM's parameters in LiteLLM's order (extras only after)."""
    parameters = list(inspect.signature(getattr(BudgetManager, name)).parameters)
    assert parameters[: len(LITELLM_API[name])] == LITELLM_API[name]


def test_budget_manager_class_functions() -> None:
    """The class section's functions give their documented results, with LiteLLM's shapes."""
    budget_manager = BudgetManager("test_project")
    created = budget_manager.create_budget(10, "alice", "weekly", created_at=1_700_000_000.0)
    assert created["total_budget"] == 10 and created["duration"] == 7
    assert created["created_at"] == 1_700_000_000.0
    assert budget_manager.get_total_budget("alice") == 10
    assert budget_manager.get_model_cost("alice") == {}  # LiteLLM: 0
    assert budget_manager.get_users() == ["alice"]
    assert budget_manager.is_valid_user("alice") and not budget_manager.is_valid_user("bob")

    projected = budget_manager.projected_cost(
        "gpt-4o", [{"role": "user", "content": "Hello"}], "alice"
    )
    # Input at $2.5/M (8 tokens) plus the default 1024 output tokens at $10/M.
    assert projected == Decimal(8 * 2.5 + 1024 * 10) / 1_000_000
    narrower = budget_manager.projected_cost(
        "gpt-4o", [{"role": "user", "content": "Hello"}], "alice", max_tokens=10
    )
    assert narrower == Decimal(8 * 2.5 + 10 * 10) / 1_000_000

    updated = budget_manager.update_cost("alice", model="gpt-4o", input_text="Hi", output_text="")
    assert list(updated) == ["user"] and updated["user"]["current_cost"] > 0
    assert budget_manager.reset_cost("alice")["user"]["current_cost"] == 0
    assert budget_manager.get_model_cost("alice") == {}
    assert budget_manager.reset_on_duration("alice") is None
    assert budget_manager.update_budget_all_users() is None
    assert budget_manager.save_data() == {"status": "success"}
