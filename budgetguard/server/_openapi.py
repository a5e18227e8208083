"""The service's OpenAPI 3.1 document: every route, its body, its replies and its errors."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_AMOUNT: dict[str, Any] = {
    "description": 'dollars, exact: a decimal string such as "0.0012", or a JSON number',
    "oneOf": [
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\s*$"},
        {"type": "number", "minimum": 0, "maximum": 1e15},
    ],
}
_NAME = {"type": "string", "minLength": 1}
_NULLABLE_NAME = {"type": ["string", "null"], "minLength": 1}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_NUMBER = {"type": "number"}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _success(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": "done",
        "content": {
            "application/json": {
                "schema": _object({"status": {"const": "success"}, "data": data}, ("status",))
            }
        },
    }


_ERROR_BODY = _object(
    {"status": {"const": "error"}, "error": {"type": "string"}}, ("status", "error")
)
_ERRORS = {
    "400": "the request is malformed (bad JSON, deep nesting, non-finite or huge numbers)",
    "401": "no token, or a wrong one",
    "403": "a read-only token on a route that changes something, or a foreign Origin",
    "404": "no such user, project user or reservation",
    "408": "the body did not arrive within the read timeout",
    "409": "a reservation id that has already ended",
    "413": "the body is larger than the limit",
    "415": "the body is not application/json",
    "503": "the ledger is unavailable",
}


def _errors(*extra: str) -> dict[str, Any]:
    codes = ("400", "401", "403", "408", "413", "415", "503", *extra)
    return {
        code: {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_RECORD = _object(
    {
        "total_budget": _NUMBER,
        "current_cost": _NUMBER,
        "model_cost": {"type": "object", "additionalProperties": _NUMBER},
        "duration": _NUMBER,
        "created_at": _NUMBER,
        "last_updated_at": _NUMBER,
    },
    ("total_budget", "current_cost", "model_cost"),
)
_USERS = {"type": "object", "additionalProperties": _RECORD}
_UNITS = ["usd", "input_tokens", "output_tokens", "tokens", "requests", "concurrency"]
_MODES = ["hard", "soft", "shadow"]
_BUDGET_ROW = _object(
    {
        "budget": {"type": "string"},
        "user": {"type": ["string", "null"]},
        "period": {"type": "string"},
        "window": {"type": "string"},
        "limit": _NUMBER,
        "spent": _NUMBER,
        "reserved": _NUMBER,
        "remaining": _NUMBER,
        "resets_at": _WHEN,
        "subject": {
            "type": ["string", "null"],
            "description": "whose calls it caps: global, user:alice, tag:team=search, "
            "model:gpt-5*, provider:openai (tag:tenant=acme for a tag:tenant=* budget)",
        },
        "label": {"type": ["string", "null"]},
        "unit": {"enum": _UNITS, "description": "what limit, spent and reserved count"},
        "mode": {"enum": _MODES},
        "parent": {"type": ["string", "null"]},
        "sliding": {"type": "boolean"},
        "over": {
            "type": "integer",
            "description": "calls a soft or shadow budget had no room for in this window",
        },
        "boost": {
            "oneOf": [
                {"type": "null"},
                _object({"limit": _NUMBER, "until": _WHEN}, ("limit", "until")),
            ]
        },
    },
    ("budget", "limit", "spent", "reserved", "remaining"),
)
#: What names one budget in a request: at most one subject (none: the global budget).
_SUBJECT = {
    "user": _NULLABLE_NAME,
    "tag": {
        "type": ["string", "null"],
        "minLength": 1,
        "description": "key=value (team=search); key=* gives each value its own budget",
    },
    "model": {"type": ["string", "null"], "minLength": 1, "description": "a pattern: gpt-5*"},
    "provider": _NULLABLE_NAME,
    "default": {"type": "boolean", "description": "the budget of each user without one"},
    "unit": {"enum": _UNITS},
    "label": {
        "type": ["string", "null"],
        "description": "which of the subject's budgets (daily); a non-dollar unit labels "
        "its budget by default",
    },
}
_LIMIT = {
    "description": "dollars for unit usd (exact, as a decimal string or a number), "
    "else a whole number of tokens, requests or calls",
    "oneOf": _AMOUNT["oneOf"],
}
_BUDGETS = {"type": "array", "items": _BUDGET_ROW}
_REFUSED = {
    "description": "the reservation does not fit a budget",
    "content": {
        "application/json": {
            "schema": _object(
                {
                    "status": {"const": "error"},
                    "error": {"type": "string"},
                    "refused": _object(
                        {
                            "budget": {"type": "string"},
                            "user": {"type": ["string", "null"]},
                            "limit": _NUMBER,
                            "spent": _NUMBER,
                            "reserved": _NUMBER,
                            "requested": _NUMBER,
                            "resets_at": _WHEN,
                        }
                    ),
                },
                ("status", "error", "refused"),
            )
        }
    },
}
_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._~-]+$"},
}
_ENDED = _object(
    {
        "id": {"type": "string"},
        "status": {"enum": ["settled", "released"]},
        "spent": _NUMBER,
    },
    ("id", "status", "spent"),
)


def _operation(
    summary: str,
    scope: str,
    reply: dict[str, Any],
    body: dict[str, Any] | None = None,
    *,
    extra: tuple[str, ...] = (),
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs a {scope} token.",
        "responses": {"200": _success(reply), **_errors(*extra)},
    }
    if body is not None:
        operation["requestBody"] = _json_body(body)
    if parameters:
        operation["parameters"] = parameters
    return operation


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document of the service (served at ``/openapi.json``)."""
    project = {"project_name": _NAME}
    paths: dict[str, Any] = {
        "/get_budget": {
            "post": _operation(
                "LiteLLM: read a project's users (or one user)",
                "read",
                _USERS,
                _object({**project, "user": _NULLABLE_NAME}, ("project_name",)),
            )
        },
        "/set_budget": {
            "post": _operation(
                "LiteLLM: set users' budgets; costs are absolute",
                "admin",
                _USERS,
                _object(
                    {
                        **project,
                        "user_dict": {
                            "type": "object",
                            "additionalProperties": _object(
                                {
                                    "total_budget": _AMOUNT,
                                    "duration": {
                                        "oneOf": [
                                            {"enum": ["daily", "weekly", "monthly", "yearly"]},
                                            {"type": "number", "exclusiveMinimum": 0},
                                            {"type": "null"},
                                        ]
                                    },
                                    "current_cost": _AMOUNT,
                                    "model_cost": {
                                        "type": "object",
                                        "additionalProperties": _AMOUNT,
                                    },
                                    "created_at": _NUMBER,
                                }
                            ),
                        },
                    },
                    ("project_name", "user_dict"),
                ),
            )
        },
        "/update_cost": {
            "post": _operation(
                "Add a cost to a project's user in one atomic step",
                "admin",
                _USERS,
                _object(
                    {**project, "user": _NAME, "cost": _AMOUNT, "model": _NULLABLE_NAME},
                    ("project_name", "user", "cost"),
                ),
                extra=("404",),
            )
        },
        "/v1/budgets": {
            "get": _operation("List every budget in its current window", "read", _BUDGETS),
            "put": _operation(
                "Set a budget: a user's, a tag's, a model's, a provider's, the default, "
                "or the global one (no subject)",
                "admin",
                _BUDGETS,
                _object(
                    {
                        **_SUBJECT,
                        "limit": _LIMIT,
                        "period": {
                            "oneOf": [
                                {"enum": ["daily", "weekly", "monthly", "yearly", "lifetime"]},
                                {"type": "null"},
                                {"type": "integer", "minimum": 1, "maximum": 3155760000},
                            ],
                            "description": "a calendar period, lifetime (null) or a window "
                            "length in seconds",
                        },
                        "mode": {"enum": _MODES},
                        "parent": _NULLABLE_NAME,
                        "sliding": {"type": "boolean"},
                    },
                    ("limit",),
                ),
            ),
        },
        "/v1/budgets/boost": {
            "post": _operation(
                "Give a budget another limit until a time; the budget itself stays as it is",
                "admin",
                _BUDGETS,
                _object(
                    {
                        **_SUBJECT,
                        "limit": _LIMIT,
                        "until": {"type": ["string", "null"], "format": "date-time"},
                        "duration": {
                            "type": ["number", "null"],
                            "exclusiveMinimum": 0,
                            "description": "seconds from now (give until or duration)",
                        },
                    },
                    ("limit",),
                ),
            )
        },
        "/v1/spend": {
            "post": _operation(
                "Record spend that already happened",
                "admin",
                _object({"user": {}, "model": {}, "spent": _NUMBER}),
                _object(
                    {"user": _NULLABLE_NAME, "cost": _AMOUNT, "model": _NULLABLE_NAME},
                    ("cost",),
                ),
            )
        },
        "/v1/report": {
            "get": _operation(
                "Spend report: budgets, breakdown, open reservations",
                "read",
                _object(
                    {
                        "period": {"type": "string"},
                        "total": _NUMBER,
                        "budgets": _BUDGETS,
                        "spend": {"type": "array"},
                        "reservations": {"type": "array"},
                    }
                ),
                parameters=[
                    {
                        "name": "period",
                        "in": "query",
                        "schema": {"enum": ["current", "previous", "all"]},
                    },
                    {
                        "name": "by",
                        "in": "query",
                        "schema": {"enum": ["user", "model", "user,model", "model,user", "tag"]},
                    },
                ],
            )
        },
        "/v1/reservations": {
            "post": _operation(
                "Reserve an estimate on every budget that applies, idempotent on id",
                "admin",
                _object(
                    {
                        "id": {"type": "string"},
                        "held": _NUMBER,
                        "expires_at": _WHEN,
                        "status": {"const": "open"},
                    },
                    ("id", "held", "status"),
                ),
                _object(
                    {
                        "id": {"type": "string", "minLength": 1, "maxLength": 128},
                        "user": _NULLABLE_NAME,
                        "estimate": _AMOUNT,
                        "model": _NULLABLE_NAME,
                    },
                    ("id",),
                ),
                extra=("409",),
            )
        },
        "/v1/reservations/{id}/settle": {
            "post": _operation(
                "Charge the real cost of a reservation; a retry answers the same",
                "admin",
                _ENDED,
                _object({"cost": _AMOUNT, "model": _NULLABLE_NAME}, ("cost",)),
                extra=("404",),
                parameters=[_ID_PARAMETER],
            )
        },
        "/v1/reservations/{id}/release": {
            "post": _operation(
                "Release a reservation's hold; nothing is charged",
                "admin",
                _ENDED,
                _object({}),
                extra=("404",),
                parameters=[_ID_PARAMETER],
            )
        },
        "/v1/health": {
            "get": _operation(
                "Check that the ledger answers", "read", _object({"ledger": {"type": "string"}})
            )
        },
    }
    paths["/v1/reservations"]["post"]["responses"]["402"] = _REFUSED
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "budgetguard budget service",
            "version": "1",
            "description": "Budgets, spend and reservations over HTTP; see the README.",
        },
        "components": {
            "schemas": {"Error": _ERROR_BODY},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
