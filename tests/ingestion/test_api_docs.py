"""The OpenAPI schema and the interactive docs: complete, with examples, and offline."""

from __future__ import annotations

import json

import yaml
from rest_framework.test import APIClient


def test_schema_documents_every_endpoint_with_examples_and_key_auth(db):
    response = APIClient().get("/api/v1/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert set(schema["paths"]) == {
        "/api/v1/studies/",
        "/api/v1/studies/search/",
        "/api/v1/studies/{code}/",
        "/api/v1/studies/{code}/image/",
        "/api/v1/studies/{code}/heatmap/",
        "/api/v1/studies/{code}/withdraw/",
        "/dicomweb/studies/",
        "/dicomweb/studies/{study_instance_uid}/",
    }
    assert [schema["paths"][path]["post"]["operationId"] for path in sorted(schema["paths"]) if "dicomweb" in path] == [
        "dicomweb_store_instances",
        "dicomweb_store_study_instances",
    ]
    upload = schema["paths"]["/api/v1/studies/"]["post"]
    assert set(upload["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/dicom",
        "application/octet-stream",
    }
    assert {"200", "202", "400", "413", "415", "422"} <= set(upload["responses"])
    idempotency = next(parameter for parameter in upload["parameters"] if parameter["name"] == "Idempotency-Key")
    assert (idempotency["in"], idempotency.get("required", False)) == ("header", False)
    assert "Idempotency-Key used before" in upload["responses"]["422"]["description"]
    examples = upload["responses"]["202"]["content"]["application/json"]["examples"]
    assert examples["JustUploaded:Queued,OutsideTheIntendedUse"]["value"]["status"] == "queued"
    # An accession number is searched in a body, not a URL (PHI review).
    search = schema["paths"]["/api/v1/studies/search/"]["post"]
    assert set(search["requestBody"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    listed = schema["paths"]["/api/v1/studies/"]["get"]["parameters"]
    by_accession = next(parameter for parameter in listed if parameter["name"] == "accession_number")
    assert by_accession["deprecated"] is True
    assert "POST /api/v1/studies/search/" in by_accession["description"]
    assert schema["components"]["securitySchemes"]["IntegrationKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A hospital's integration key: `Authorization: Bearer <key>`.",
    }
    detail = schema["components"]["schemas"]["Study"]["properties"]
    assert set(detail) == {
        "id", "status", "failure_reason", "failure_code", "accession_number", "created_at", "updated_at",
        "image_url", "prediction", "reviews", "warnings", "study_instance_uid", "series_instance_uid",
        "sop_instance_uid", "withdrawn_at", "withdrawal_reason",
    }  # fmt: skip
    # Pleura sets every field: read-only, so required in answers (EMR review).
    assert schema["components"]["schemas"]["Study"]["required"] == sorted(detail)
    assert all(field.get("readOnly") for name, field in detail.items() if "$ref" not in field and "allOf" not in field)
    # An upload's file is bytes, not a URL; no operation is described by a base class's docstring;
    # no example names another API; STOW answers DICOM JSON whatever ?format= says.
    assert schema["components"]["schemas"]["StudyUploadRequest"]["properties"]["file"] == {
        "type": "string", "format": "binary",
        "description": "The radiograph: PNG, JPEG or DICOM (type is detected from content).",
    }  # fmt: skip
    served = json.dumps(schema)
    assert "Base for every tenant-owned endpoint" not in served
    assert "api.example.org" not in served
    stow = schema["paths"]["/dicomweb/studies/"]["post"]
    assert "format" not in [parameter["name"] for parameter in stow.get("parameters", [])]
    assert "411" in stow["responses"] and "411" in upload["responses"]
    # What the numbers mean, for an integrator who would otherwise compare with 0.5.
    prediction = schema["components"]["schemas"]["Prediction"]["properties"]
    assert "never with 0.5" in prediction["threshold"]["description"]
    assert "not a confidence in `label`" in prediction["probability"]["description"]
    assert "null when the model drew none" in prediction["heatmap_url"]["description"]
    assert schema["components"]["schemas"]["FailureCodeEnum"]["enum"] == [
        "undecodable", "missing_file", "inference_error", "gave_up",
    ]  # fmt: skip
    assert "only sending the image again can mend it" in detail["failure_code"]["description"]
    # Every warning code, for an integrator matching them.
    warning = schema["components"]["schemas"]["Warning"]["properties"]["code"]
    assert warning["allOf"] == [{"$ref": "#/components/schemas/WarningCodeEnum"}]
    assert schema["components"]["schemas"]["WarningCodeEnum"]["enum"] == [
        "not_chest", "not_radiograph", "adult", "child_outside_trained_ages", "not_frontal", "first_frame_only",
        "same_film_other_patient",
    ]  # fmt: skip
    assert "* `not_frontal` - The view is not frontal (PA or AP)" in warning["description"]


def test_swagger_ui_is_served_from_our_own_static_files(db):
    response = APIClient().get("/api/v1/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "cdn." not in page and "unpkg" not in page


def test_every_operation_documents_the_throttle_and_the_outage_answers(db):
    """Every call may meet the key's throttle (429) and an outage (503, Retry-After)."""
    schema = APIClient().get("/api/v1/schema/?format=json").json()
    operations = {
        (method, path): set(operation["responses"])
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert len(operations) == 9
    assert {key: {"429", "503"} <= codes for key, codes in operations.items()} == dict.fromkeys(operations, True)


def test_the_lists_page_schema_fits_the_change_feeds_pages_too(db):
    """`count` was required, and the change feed's pages have none (EMR review)."""
    schema = yaml.safe_load(APIClient().get("/api/v1/schema/").content)
    listed = schema["paths"]["/api/v1/studies/"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    page = schema["components"]["schemas"][listed["$ref"].split("/")[-1]]
    assert page["required"] == ["results"]
    assert "absent on the change feed's pages" in page["properties"]["count"]["description"]
