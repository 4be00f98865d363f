"""Conventions of every route: auth, error bodies, body limit, malformed JSON, OpenAPI."""

from __future__ import annotations

import pytest
import requests


@pytest.mark.parametrize("path", ["/inference/test-connection", "/checkpoints", "/datasets",
                                  "/inference/get-lora-list"])
def test_missing_key_is_401_and_wrong_key_is_403(middleware, path):
    missing = requests.get(middleware.url + path, timeout=10)
    assert missing.status_code == 401
    assert missing.json() == {"statusCode": 401, "error": missing.json()["error"]}
    assert "Missing API key" in missing.json()["error"]
    wrong = requests.get(middleware.url + path, headers={"x-api-key": "nope"}, timeout=10)
    assert wrong.status_code == 403 and wrong.json()["statusCode"] == 403


def test_bearer_key_and_test_connection(middleware):
    ok = requests.get(f"{middleware.url}/inference/test-connection", headers={"Authorization": "Bearer test-key"},
                      timeout=10)
    assert ok.status_code == 200 and ok.json()["message"] == "Success" and ok.json()["username"] == "admin"


def test_healthz_needs_no_key(middleware):
    body = requests.get(f"{middleware.url}/healthz", timeout=10).json()
    assert body["status"] == "ok" and body["version"]


def test_malformed_json_is_400(middleware, headers):
    response = requests.post(f"{middleware.url}/checkpoint", data=b"{not json", headers=headers, timeout=10)
    assert response.status_code == 400
    assert response.json()["statusCode"] == 400 and "not valid JSON" in response.json()["error"]


@pytest.mark.parametrize("body", [b"{not json", b'{"dataset_name": 1, "colour": "blue"}'])
def test_the_key_is_checked_before_the_body(middleware, body):
    """FastAPI validates a body before the routers' key check runs; a bad body must not reveal more than a
    missing key does."""
    missing = requests.post(f"{middleware.url}/dataset", data=body, timeout=10)
    assert missing.status_code == 401 and "Missing API key" in missing.json()["error"]
    wrong = requests.post(f"{middleware.url}/dataset", data=body, headers={"x-api-key": "nope"}, timeout=10)
    assert wrong.status_code == 403


def test_unknown_body_field_is_422(middleware, headers):
    response = requests.post(f"{middleware.url}/dataset", headers=headers, timeout=10, json={
        "dataset_name": "x", "content": [{"filename": "a.png"}], "colour": "blue"})
    assert response.status_code == 422 and "colour" in response.json()["error"]
    assert response.json()["detail"][0]["loc"][-1] == "colour"


def test_body_over_limit_is_413(middleware, headers):
    big = b'{"dataset_name": "x", "params": {"pad": "' + b"a" * (33 * 1024 * 1024) + b'"}}'
    response = requests.post(f"{middleware.url}/dataset", data=big, headers=headers, timeout=30)
    assert response.status_code == 413 and response.json()["statusCode"] == 413

    def chunks():  # no Content-Length: the limit is enforced while streaming
        yield b'{"dataset_name": "x", "params": {"pad": "'
        for _ in range(34):
            yield b"a" * (1024 * 1024)
        yield b'"}}'

    streamed = requests.post(f"{middleware.url}/dataset", data=chunks(), headers=headers, timeout=30)
    assert streamed.status_code == 413 and "over" in streamed.json()["error"]
    assert '"run": false' in streamed.json()["error"] and "api_params_upload_url" in streamed.json()["error"]


def test_unknown_route_has_error_body(middleware, headers):
    response = requests.get(f"{middleware.url}/no/such/route/here", headers=headers, timeout=10)
    assert response.status_code == 404 and response.json()["statusCode"] == 404


def test_openapi_describes_the_routes(middleware):
    paths = requests.get(f"{middleware.url}/openapi.json", timeout=10).json()["paths"]
    for path in ["/checkpoint", "/checkpoints", "/upload_checkpoint", "/dataset", "/datasets",
                 "/dataset/{dataset_name}/data", "/inference/test-connection", "/inference/get-lora-list",
                 "/inference/generate-s3-presigned-url-for-uploading"]:
        assert path in paths
    assert requests.get(f"{middleware.url}/docs", timeout=10).status_code == 200


@pytest.mark.local_only("the local blob store's signed /blobs URLs (S3's presigned URLs are tested against seaweedfs)")
def test_blob_urls_expired_tampered_unsigned(middleware, client, tmp_path):
    import time
    from urllib.parse import parse_qs, urlencode, urlsplit

    url = client.presigned_upload_url("uploads/sig.bin")
    assert requests.put(url, data=b"abc", timeout=10).status_code == 200
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"

    expired = {**query, "X-Expires": str(int(time.time()) - 10)}
    response = requests.put(f"{base}?{urlencode(expired)}", data=b"x", timeout=10)
    assert response.status_code == 403  # the expiry is signed: changing it breaks the signature
    tampered_key = url.replace("uploads/sig.bin", "uploads/other.bin")
    assert requests.put(tampered_key, data=b"x", timeout=10).status_code == 403
    assert requests.put(base, data=b"x", timeout=10).status_code == 403
    assert "not signed" in requests.put(base, data=b"x", timeout=10).json()["error"]
    wrong_method = requests.get(url, timeout=10)
    assert wrong_method.status_code == 403 and "signed for PUT, not GET" in wrong_method.json()["error"]


def test_signed_url_expiry_is_enforced(tmp_path):
    """A URL signed with a lifetime of 1 s is refused once it has passed (store level, same code)."""
    import asyncio
    import time

    from aws_extension.middleware.blobs.local import LocalBlobStore, SignatureError

    store = LocalBlobStore(tmp_path, b"secret", "http://127.0.0.1:1", 3600, 5, 10)
    url = store.signed_url("uploads/a", "PUT", expires_in=1)
    query = dict(p.split("=") for p in url.split("?", 1)[1].split("&"))
    store.verify("PUT", "uploads/a", query)
    time.sleep(2.1)
    with pytest.raises(SignatureError, match="expired"):
        store.verify("PUT", "uploads/a", query)

    async def body():
        yield b"data"
    assert asyncio.run(store.receive_object("uploads/a", body(), 100)).startswith('"')


def test_openapi_documents_every_answer(middleware):
    """Every route declares the model of its success answer, so /openapi.json documents each answer of API.md."""
    spec = requests.get(f"{middleware.url}/openapi.json", timeout=10).json()
    undocumented = [(method, path) for path, operations in spec["paths"].items() for method, operation in operations.items()
                    if not operation["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema")]
    assert not undocumented, undocumented
    job = spec["paths"]["/inference/get-inference-job"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert job == {"$ref": "#/components/schemas/JobAnswer"}
    fields = spec["components"]["schemas"]["JobAnswer"]["properties"]
    assert {"InferenceJobId", "status", "queue_position", "progress", "image_names"} <= set(fields)
