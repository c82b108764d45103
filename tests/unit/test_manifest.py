"""The service manifest agrees with the services it declares and with the event catalogue."""
from __future__ import annotations

import importlib

import pytest
from fastapi import FastAPI

from gateway.routing import owner_of, upstream_urls
from gateway.settings import GatewaySettings
from shared import manifest
from shared.caller import SCOPES
from shared.events import CATALOGUE
from shared.http import JSON_LIMIT, body_limit, content_type_allowed
from shared.manifest import API_PREFIX, SERVICES, ServiceEntry
from shared.service import ServiceSpec

# Service-to-service routes (not routed by the gateway, not in its document) live under this segment.
INTERNAL = API_PREFIX + "/internal/"


def factory(entry: ServiceEntry):
    module_name, _, name = entry.app.partition(":")
    return importlib.import_module(module_name), name


def service_spec(entry: ServiceEntry) -> ServiceSpec:
    """The ServiceSpec the service's app factory builds (its app is not built)."""
    module, name = factory(entry)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "create_service_app", lambda spec: spec)
        spec = getattr(module, name)()
    assert isinstance(spec, ServiceSpec), f"{entry.app} does not build its app with shared.service.create_service_app"
    return spec


def service_app(entry: ServiceEntry) -> FastAPI:
    module, name = factory(entry)
    return getattr(module, name)()


def public_operations(entry: ServiceEntry) -> dict[str, dict]:
    """Path → operations of the service's public routes, from its OpenAPI document (what the gateway merges)."""
    paths = service_app(entry).openapi()["paths"]
    return {path: operations for path, operations in paths.items()
            if path.startswith(API_PREFIX + "/") and not path.startswith(INTERNAL)}


by_name = pytest.mark.parametrize("entry", SERVICES, ids=lambda e: e.name)


@by_name
def test_app_import_string_builds_that_service(entry):
    spec = service_spec(entry)
    assert spec.name == entry.name
    assert list(spec.publishes) == ([entry.topic] if entry.topic else [])
    assert isinstance(service_app(entry), FastAPI)


@by_name
def test_every_handler_names_a_catalogue_type_on_a_topic_its_consumer_reads(entry):
    for consumer in service_spec(entry).consumers:
        for event_type in consumer.handlers:
            assert event_type in CATALOGUE, f"{entry.name}'s consumer {consumer.name} handles {event_type!r}, not in the catalogue"
            assert CATALOGUE[event_type].topic in consumer.topics


@by_name
def test_declared_event_types_are_the_catalogues_types_on_its_topic(entry):
    on_topic = {spec.type for spec in CATALOGUE.values() if entry.topic and spec.topic == entry.topic}
    assert set(entry.event_types) == on_topic
    assert len(entry.event_types) == len(set(entry.event_types))


def test_every_catalogue_topic_has_one_publisher():
    publishers = [entry.topic for entry in SERVICES if entry.topic]
    assert len(publishers) == len(set(publishers))
    assert {spec.topic for spec in CATALOGUE.values()} <= set(publishers)
    assert manifest.SOURCES == {entry.topic: f"/{entry.name}" for entry in SERVICES if entry.topic}


def test_route_prefixes_are_single_segments_owned_by_one_service():
    prefixes = [prefix for entry in SERVICES for prefix in entry.route_prefixes]
    assert len(prefixes) == len(set(prefixes)), "two services declare the same route prefix"
    for prefix in prefixes:
        assert prefix.startswith("/") and "/" not in prefix[1:] and prefix != "/internal", prefix


def test_names_and_default_ports_are_distinct():
    assert all(e.name.isidentifier() and e.name.islower() for e in SERVICES)  # a settings field and env prefix
    assert len({e.name for e in SERVICES}) == len(SERVICES)
    assert len({e.default_port for e in SERVICES}) == len(SERVICES)
    assert 8000 not in {e.default_port for e in SERVICES}  # the gateway's


@by_name
def test_every_public_route_of_a_service_is_routed_to_it_by_the_gateway(entry):
    for path in public_operations(entry):
        assert owner_of(path) == entry.name, f"{entry.name} serves {path} outside its route prefixes"


def test_the_route_checks_see_routes():
    assert public_operations(next(e for e in SERVICES if e.name == "registry")), "no public route found: the checks above would pass on nothing"


@by_name
def test_internal_routes_are_not_routed_by_the_gateway(entry):
    assert owner_of(INTERNAL + "anything") is None


@by_name
def test_route_scopes_are_declared_scopes(entry):
    document = service_app(entry).openapi()
    used = {scope for operations in document["paths"].values() for operation in operations.values()
            for scope in operation.get("x-required-scopes", [])}
    assert used <= set(entry.scopes), f"{entry.name} checks scopes it does not declare: {used - set(entry.scopes)}"
    assert set(entry.scopes) <= set(SCOPES)


@by_name
def test_upload_routes_are_routes_of_that_service_with_their_own_limit(entry):
    posts = {path for path, operations in public_operations(entry).items() if "post" in operations}
    for upload in entry.upload_routes:
        path = API_PREFIX + upload.path
        assert path in posts, f"{entry.name} declares an upload route it does not serve: {upload.path}"
        assert body_limit(path) == upload.limit > JSON_LIMIT
        assert all(content_type_allowed(path, media_type) for media_type in upload.media_types)


def test_other_routes_take_json_bodies_only():
    path = API_PREFIX + "/volunteers"
    assert body_limit(path) == JSON_LIMIT
    assert body_limit(API_PREFIX + "/volunteers/import/extra") == JSON_LIMIT
    assert content_type_allowed(path, "application/json") and not content_type_allowed(path, "text/csv")


def test_templated_upload_paths_match_one_segment(monkeypatch):
    upload = manifest.UploadRoute("/projects/{project_id}/import", limit=3 * manifest.MIB)
    monkeypatch.setattr(manifest, "_TEMPLATE_UPLOADS", [(manifest.path_pattern(API_PREFIX + upload.path), upload)])
    assert manifest.upload_route(API_PREFIX + "/projects/p-1/import") is upload
    assert manifest.upload_route(API_PREFIX + "/projects/p-1/x/import") is None
    assert manifest.upload_route(API_PREFIX + "/projects/p-1/import/more") is None


@by_name
def test_audited_routes_are_under_that_services_prefixes(entry):
    for route in entry.audited_routes:
        assert route.method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        assert owner_of(API_PREFIX + route.path) == entry.name, f"{entry.name} audits {route.path}, a route it does not own"



def test_the_gateway_finds_each_service_at_its_url_setting(monkeypatch, tmp_path):
    for port, entry in enumerate(SERVICES, start=9100):
        monkeypatch.setenv(entry.url_setting, f"http://10.0.0.1:{port}/")
    urls = upstream_urls(GatewaySettings(data_dir=tmp_path))
    assert urls == {entry.name: f"http://10.0.0.1:{port}" for port, entry in enumerate(SERVICES, start=9100)}
    assert [entry.url_setting for entry in SERVICES] == ["VMC_REGISTRY_URL", "VMC_ACTIVITIES_URL", "VMC_ANALYTICS_URL"]
