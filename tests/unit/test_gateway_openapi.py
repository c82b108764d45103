"""The merged OpenAPI document: one title, components renamed on collision, scopes and errors documented."""
from __future__ import annotations

from gateway.openapi import TITLE, merge


def service_doc(path: str, schema_name: str, schema: dict, scopes: list[str] | None = None) -> dict:
    operation = {
        "summary": "op",
        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}},
        "requestBody": {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}},
    }
    if scopes:
        operation["x-required-scopes"] = scopes
    return {
        "openapi": "3.1.0",
        "info": {"title": "x", "version": "0"},
        "paths": {path: {"post": operation}, "/health": {"get": {"summary": "service health", "responses": {"200": {"description": "ok"}}}}},
        "components": {"schemas": {schema_name: schema, "Shared": {"type": "string"}}},
        "tags": [{"name": path.split("/")[3]}],
    }


GATEWAY = {"openapi": "3.1.0", "info": {"title": "gw", "version": "1"}, "paths": {
    "/api/v1/openapi.json": {"get": {"responses": {"200": {"description": "ok"}}}},
    "/health": {"get": {"responses": {"200": {"description": "ok"}}}},
}}


def test_colliding_components_are_renamed_and_refs_follow():
    merged = merge(GATEWAY, {
        "registry": service_doc("/api/v1/organizations", "Item", {"type": "object", "properties": {"a": {"type": "string"}}}),
        "activities": service_doc("/api/v1/activities", "Item", {"type": "object", "properties": {"b": {"type": "integer"}}}),
    })
    schemas = merged["components"]["schemas"]
    assert schemas["Item"]["properties"] == {"b": {"type": "integer"}}  # first source alphabetically keeps the name
    assert schemas["registry_Item"]["properties"] == {"a": {"type": "string"}}
    assert "registry_Shared" not in schemas and schemas["Shared"] == {"type": "string"}  # equal shapes are shared
    registry_op = merged["paths"]["/api/v1/organizations"]["post"]
    assert registry_op["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/registry_Item"
    activities_op = merged["paths"]["/api/v1/activities"]["post"]
    assert activities_op["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Item"


def test_one_title_security_scheme_scopes_and_errors():
    merged = merge(GATEWAY, {"registry": service_doc("/api/v1/organizations", "Org", {"type": "object"}, ["registry:write"])})
    assert merged["info"]["title"] == TITLE and merged["info"]["version"]
    scheme = merged["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert merged["security"] == [{"bearerAuth": []}]
    operation = merged["paths"]["/api/v1/organizations"]["post"]
    assert operation["x-required-scopes"] == ["registry:write"]
    assert "Required scope: `registry:write`." in operation["description"]
    for status in ("401", "403", "404", "413", "415", "422", "429", "503", "504"):
        content = operation["responses"][status]["content"]
        assert content["application/problem+json"]["schema"]["$ref"] == "#/components/schemas/Problem"
    assert "Problem" in merged["components"]["schemas"]


def test_open_operations_need_no_key_and_services_operational_routes_stay_private():
    merged = merge(GATEWAY, {"registry": service_doc("/api/v1/organizations", "Org", {"type": "object"})})
    assert merged["paths"]["/api/v1/openapi.json"]["get"]["security"] == []
    assert merged["paths"]["/health"]["get"]["security"] == []  # the gateway's own
    assert merged["paths"]["/health"]["get"].get("summary") != "service health"
    assert "401" not in merged["paths"]["/api/v1/openapi.json"]["get"]["responses"]
