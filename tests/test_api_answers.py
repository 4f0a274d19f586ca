"""What a route can answer follows from what it is (api.contract.answers_for), and the served document says so."""

from __future__ import annotations

from api.contract import RouteFacts, answers_for
from tests.support import Api


def test_a_public_read_answers_only_its_success() -> None:
    assert answers_for(RouteFacts(method="GET", public=True)) == {}


def test_a_keyed_read_of_a_named_resource() -> None:
    assert set(answers_for(RouteFacts(method="GET", path_params=True, inputs=True))) == {401, 404, 422}


def test_an_admin_list_with_no_parameters() -> None:
    assert set(answers_for(RouteFacts(method="GET", admin_only=True))) == {401, 403}


def test_a_create_with_wait() -> None:
    found = answers_for(RouteFacts(method="POST", inputs=True, json_body=True, waits=True, success=201))
    assert set(found) == {202, 401, 404, 409, 413, 422, 503}


def test_a_delete_that_answers_204_once_done() -> None:
    found = answers_for(RouteFacts(method="DELETE", path_params=True, inputs=True, waits=True, success=202))
    assert set(found) == {202, 204, 401, 404, 409, 422, 503}
    seed_004_delete = RouteFacts(method="DELETE", inputs=True, json_body=True, waits=True, success=200)
    assert 204 not in answers_for(seed_004_delete)


def test_an_upload_names_its_limit_and_storage() -> None:
    found = answers_for(RouteFacts(method="POST", inputs=True, waits=True, upload=True))
    assert found[413] and "S3" in found[503]


def test_gateway_routes_answer_400_not_422_and_a_route_adds_its_own() -> None:
    found = answers_for(RouteFacts(method="GET", gateway=True, path_params=True, inputs=True, extra={503: "x"}))
    assert set(found) == {400, 401, 404, 503}


def test_the_served_document_lists_the_answers_with_their_schemas(admin: Api) -> None:
    document = admin.get("/schema/openapi.json").json()
    create = document["paths"]["/v2/workspaces"]["post"]
    assert {"201", "202", "401", "409", "422", "503"} <= set(create["responses"]) and "400" not in create["responses"]
    error = create["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/HTTPValidationError"}
    pending = create["responses"]["202"]["content"]["application/json"]["schema"]
    assert pending == {"$ref": "#/components/schemas/CommandStatus"}
    assert document["components"]["schemas"]["WorkspaceCreate"]["additionalProperties"] is False
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    assert "security" not in document["paths"]["/v2/workspaces"]["get"]  # the document's default: a bearer key
    assert "403" in document["paths"]["/v2/nodes"]["get"]["responses"]
    models = document["paths"]["/v1/models/{model}"]["get"]["responses"]["404"]["content"]["application/json"]
    assert set(models["schema"]["properties"]) == {"error"}  # OpenAI's shape on the gateway's routes
    seeded = document["paths"]["/api/v1/lora"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert seeded["seed"]["value"]["model_name"] == "IlyaGusev/saiga_mistral_7b_lora"
