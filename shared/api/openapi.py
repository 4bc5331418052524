"""The OpenAPI 2.0 (Swagger) document of the HTTP API, generated from the same pydantic models.

Power Automate custom connectors import OpenAPI 2.0 only, so pydantic's JSON Schema is
lowered to the Swagger 2.0 subset: no anyOf/null (optional fields become ``x-nullable``),
``definitions`` instead of ``$defs``, and ``x-ms-summary`` labels for the designer.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from shared.api import models as m

_MODELS: tuple[type[BaseModel], ...] = (
    m.ResetSubmission,
    m.SubmissionAccepted,
    m.ResetStatus,
    m.Problem,
    m.PoisonList,
    m.ReplayOrder,
    m.ReplayResult,
    m.Health,
    m.Breaker,
    m.BreakerClose,
    m.BreakerClosed,
)
_DROP = {"title", "default", "$schema", "$id"}


def _summary(name: str) -> str:
    words = "".join(f" {c.lower()}" if c.isupper() else c for c in name).strip()
    return words[:1].upper() + words[1:]


def _lower(schema: Any) -> Any:
    """Rewrite one JSON Schema node into Swagger 2.0's dialect."""
    if isinstance(schema, list):
        return [_lower(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    node = {k: v for k, v in schema.items() if k not in _DROP}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        merged = _lower(options[0]) if len(options) == 1 else {"type": "object"}
        merged.update({k: _lower(v) for k, v in node.items()})
        merged["x-nullable"] = True
        return merged
    if "$ref" in node:
        return {"$ref": node["$ref"].replace("#/$defs/", "#/definitions/")}
    if "properties" in node:
        node["properties"] = {
            name: {**_lower(prop), "x-ms-summary": _summary(name)} for name, prop in node["properties"].items()
        }
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _lower(node[key])
    if node.get("format") == "uuid":
        node["format"] = "uuid"
    return node


# Examples the connector shows and the contract fuzz starts from (schemathesis's examples phase).
EXAMPLE_GUEST = "5e0c1d2a-0001-4a5b-9c3d-000000000001"
_EXAMPLES: dict[str, Any] = {
    "ResetSubmission": {"userId": EXAMPLE_GUEST, "ticketId": "INC0012345", "sendInvitationMessage": True},
    "ReplayOrder": {"errorCode": "GraphUnavailable", "max": 10},
}


def definitions() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for model in _MODELS:
        schema = copy.deepcopy(model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}"))
        for name, sub in schema.pop("$defs", {}).items():
            found[name] = _lower(sub)
        found[model.__name__] = _lower(schema)
    for name, example in _EXAMPLES.items():
        found[name]["example"] = example
    return found


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def _problem(description: str, **headers: dict[str, str]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "schema": _ref("Problem")}
    if headers:
        answer["headers"] = headers
    return answer


_SECONDS = {"type": "integer", "description": "Seconds to wait before trying again."}
# Answers every operation may give: no Entra ID principal (when required), a caller outside
# ALLOWED_CALLERS or without the capability, settings or storage not usable.
_COMMON = {
    "401": _problem("No Microsoft Entra ID caller (only when App Service authentication is required)"),
    "403": _problem("Caller not allowed, or lacking the capability the problem names"),
    "503": _problem(
        "Settings or storage not usable; the problem names settings, never their values", **{"Retry-After": _SECONDS}
    ),
}


def document(host: str, *, scheme: str = "https") -> dict[str, Any]:
    """The whole document for a function app reachable at ``host``."""
    retry_after = {"Retry-After": {"type": "integer", "description": "Seconds to wait before polling."}}
    return {
        "swagger": "2.0",
        "info": {
            "title": "Guest Redemption Reset",
            "version": "1.0",
            "description": "Reset the B2B redemption status of Microsoft Entra guests, asynchronously.",
        },
        "host": host,
        "basePath": "/api",
        "schemes": [scheme],
        "consumes": ["application/json"],
        # Refusals are RFC 9457 problem documents.
        "produces": ["application/json", "application/problem+json"],
        "securityDefinitions": {"functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"}},
        "security": [{"functionKey": []}],
        "paths": {
            "/resets": {
                "post": {
                    "operationId": "SubmitReset",
                    "summary": "Reset a guest's redemption status",
                    "description": "Validates and enqueues one request or a batch; answers 202 with the "
                    "status URL to poll (the asynchronous pattern Logic Apps follow).",
                    "x-ms-visibility": "important",
                    "parameters": [
                        {"name": "body", "in": "body", "required": True, "schema": _ref("ResetSubmission")},
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "type": "string",
                            "x-ms-summary": "Idempotency key",
                            "x-ms-visibility": "advanced",
                            "description": "Makes a resubmission return the existing request.",
                        },
                    ],
                    "responses": {
                        "202": {
                            "description": "Accepted",
                            "schema": _ref("SubmissionAccepted"),
                            "headers": {**retry_after, "Location": {"type": "string"}},
                            # Stateful testing (schemathesis) follows it: submit, then poll.
                            "x-links": {
                                "GetResetStatus": {
                                    "operationId": "GetResetStatus",
                                    "parameters": {"requestId": "$response.body#/accepted/0/requestId"},
                                }
                            },
                        },
                        "400": _problem("Invalid request: every bad item and field is listed"),
                        **_COMMON,
                        "403": _problem("Caller not allowed, or lacking a capability the request needs (each listed)"),
                        "409": _problem("The requestId is already taken by another caller"),
                        "413": _problem("Body over 1 MB or batch over 1,000"),
                        "415": _problem("Body is not JSON"),
                    },
                }
            },
            "/resets/{requestId}": {
                "get": {
                    "operationId": "GetResetStatus",
                    "summary": "Get the outcome of a reset request",
                    "parameters": [
                        {
                            "name": "requestId",
                            "in": "path",
                            "required": True,
                            "type": "string",
                            "x-ms-summary": "Request id",
                            "x-example": "INC0012345",
                        }
                    ],
                    "responses": {
                        "200": {"description": "Finished", "schema": _ref("ResetStatus")},
                        "202": {
                            "description": "Still running",
                            "schema": _ref("ResetStatus"),
                            "headers": {**retry_after, "Location": {"type": "string"}},
                        },
                        **_COMMON,
                        "404": _problem("Unknown requestId, or a request this caller may not read"),
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "GetHealth",
                    "summary": "Check settings and storage",
                    "x-ms-visibility": "internal",
                    "responses": {
                        "200": {"description": "Healthy", "schema": _ref("Health")},
                        "401": _COMMON["401"],
                        "403": _COMMON["403"],
                        "503": {
                            "description": "Unhealthy (setting names only, never values)",
                            "schema": _ref("Health"),
                        },
                    },
                }
            },
            "/poison": {
                "get": {
                    "operationId": "ListPoisoned",
                    "summary": "List failed (poisoned) requests (admin key)",
                    "x-ms-visibility": "internal",
                    "parameters": [
                        {"name": "errorCode", "in": "query", "required": False, "type": "string"},
                        {"name": "requestId", "in": "query", "required": False, "type": "string"},
                        {
                            "name": "max",
                            "in": "query",
                            "required": False,
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                        },
                    ],
                    "responses": {
                        "200": {"description": "Failed requests", "schema": _ref("PoisonList")},
                        "400": _problem("Bad query"),
                        **_COMMON,
                    },
                }
            },
            "/poison/replay": {
                "post": {
                    "operationId": "ReplayPoisoned",
                    "summary": "Put failed requests back on the request queue (admin key)",
                    "x-ms-visibility": "internal",
                    # No body is an order without filters: replay up to 100 failed requests.
                    "parameters": [{"name": "body", "in": "body", "required": False, "schema": _ref("ReplayOrder")}],
                    "responses": {
                        "200": {"description": "What moved", "schema": _ref("ReplayResult")},
                        "400": _problem("Bad replay order"),
                        **_COMMON,
                    },
                }
            },
            "/breaker": {
                "get": {
                    "operationId": "GetInvitationBreaker",
                    "summary": "Is the invitation circuit breaker open? (admin key)",
                    "x-ms-visibility": "internal",
                    "responses": {"200": {"description": "The breaker", "schema": _ref("Breaker")}, **_COMMON},
                }
            },
            "/breaker/close": {
                "post": {
                    "operationId": "CloseInvitationBreaker",
                    "summary": "Close the invitation breaker once Microsoft lifted the block (admin key)",
                    "description": "Held requests go back to the queue and resume.",
                    "x-ms-visibility": "internal",
                    "parameters": [{"name": "body", "in": "body", "required": False, "schema": _ref("BreakerClose")}],
                    "responses": {
                        "200": {"description": "Closed; held requests resumed", "schema": _ref("BreakerClosed")},
                        "400": _problem("Bad body"),
                        **_COMMON,
                    },
                }
            },
        },
        "definitions": definitions(),
    }
