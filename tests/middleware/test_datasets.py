"""Datasets over real HTTP."""

from __future__ import annotations

import requests


def test_dataset_flow(middleware, headers, tmp_path):
    files = {"cat.png": b"\x89PNG cat", "dog.jpg": b"jpeg dog"}
    create = requests.post(f"{middleware.url}/dataset", headers=headers, timeout=10, json={
        "dataset_name": "pets", "params": {"description": "two pets"},
        "content": [{"filename": n, "name": n.split(".")[0], "type": "image"} for n in files]})
    assert create.status_code == 200, create.text
    answer = create.json()
    assert answer["statusCode"] == 200 and answer["datasetName"] == "pets"
    assert set(answer["s3PresignUrl"]) == set(files)

    # Enabling before every file arrived names the missing ones and changes nothing.
    requests.put(answer["s3PresignUrl"]["cat.png"], data=files["cat.png"], timeout=10).raise_for_status()
    early = requests.put(f"{middleware.url}/dataset", headers=headers, timeout=10,
                         json={"dataset_name": "pets", "status": "Enabled"})
    assert early.status_code == 400 and "dog.jpg" in early.json()["error"] and "cat.png" not in early.json()["error"]
    data = requests.get(f"{middleware.url}/dataset/pets/data", headers=headers, timeout=10).json()
    assert {d["name"]: d["dataStatus"] for d in data["data"]} == {"cat": "Enabled", "dog": "Initialed"}

    requests.put(answer["s3PresignUrl"]["dog.jpg"], data=files["dog.jpg"], timeout=10).raise_for_status()
    enabled = requests.put(f"{middleware.url}/dataset", headers=headers, timeout=10,
                           json={"dataset_name": "pets", "status": "Enabled"})
    assert enabled.json() == {"statusCode": 200, "datasetName": "pets", "status": "Enabled"}

    listed = requests.get(f"{middleware.url}/datasets", params={"dataset_status": "Enabled"}, headers=headers,
                          timeout=10).json()
    entry = next(d for d in listed["datasets"] if d["datasetName"] == "pets")
    assert entry["status"] == "Enabled" and entry["description"] == "two pets" and entry["s3"]
    assert isinstance(entry["timestamp"], float | int)

    for path in ("/dataset/pets/data", "/pets/data"):  # API.md's path and the seed's
        data = requests.get(middleware.url + path, headers=headers, timeout=10).json()
        assert data["statusCode"] == 200 and data["dataset_name"] == "pets"
        for item in data["data"]:
            assert item["dataStatus"] == "Enabled" and item["key"].startswith("dataset/pets/")
            assert requests.get(item["preview_url"], timeout=10).content == files[item["filename"]]

    disabled = requests.put(f"{middleware.url}/dataset", headers=headers, timeout=10,
                            json={"dataset_name": "pets", "status": "Disabled"})
    assert disabled.json()["status"] == "Disabled"


def test_dataset_name_in_use_and_bad_names(middleware, headers):
    body = {"dataset_name": "dup-ds", "content": [{"filename": "a.png", "name": "a", "type": "image"}]}
    assert requests.post(f"{middleware.url}/dataset", json=body, headers=headers, timeout=10).status_code == 200
    again = requests.post(f"{middleware.url}/dataset", json=body, headers=headers, timeout=10)
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    for name in ["../evil", "has space", "-lead", "x" * 64]:
        bad = requests.post(f"{middleware.url}/dataset", json={**body, "dataset_name": name}, headers=headers, timeout=10)
        assert bad.status_code == 400 and "dataset name" in bad.json()["error"]
    path_name = requests.post(f"{middleware.url}/dataset", headers=headers, timeout=10, json={
        "dataset_name": "pathy", "content": [{"filename": "/path/to/a/file.png", "name": "x", "type": "png"}]})
    assert path_name.status_code == 400 and "'file.png'" in path_name.json()["error"]
    empty = requests.post(f"{middleware.url}/dataset", headers=headers, timeout=10,
                          json={"dataset_name": "empty-ds", "content": []})
    assert empty.status_code == 400
    names = [d["datasetName"] for d in requests.get(f"{middleware.url}/datasets", headers=headers, timeout=10).json()["datasets"]]
    assert "pathy" not in names and "empty-ds" not in names


def test_unknown_dataset(middleware, headers):
    assert requests.get(f"{middleware.url}/dataset/nope/data", headers=headers, timeout=10).status_code == 404
    response = requests.put(f"{middleware.url}/dataset", headers=headers, timeout=10,
                            json={"dataset_name": "nope", "status": "Enabled"})
    assert response.status_code == 404


def test_client_creates_enabled_dataset(client, tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"img" * (i + 1))
        paths.append(path)
    result = client.create_dataset_from_files("client-ds", paths, "made by the client")
    assert result["status"] == "Enabled"
    assert len(client.dataset_files("client-ds")) == 3


def _pages(url: str, headers: dict, limit: int, field: str, **params) -> list[str]:
    seen, last_key = [], None
    while True:
        page = requests.get(url, params={**params, "limit": limit, **({"last_key": last_key} if last_key else {})},
                            headers=headers, timeout=10).json()
        seen.extend(d["datasetName"] for d in page[field])
        last_key = page["last_key"]
        if last_key is None:
            return seen


def test_datasets_are_listed_a_page_at_a_time(middleware, headers, client, monkeypatch):
    for i in range(5):
        assert requests.post(f"{middleware.url}/dataset", headers=headers, timeout=10, json={
            "dataset_name": f"paged-{i}", "content": [{"filename": "a.png"}]}).status_code == 200
    whole = [d["datasetName"] for d in client.list_datasets()]
    assert whole[:5] == [f"paged-{i}" for i in reversed(range(5))]  # newest first
    assert _pages(f"{middleware.url}/datasets", headers, 2, "datasets") == whole
    assert _pages(f"{middleware.url}/datasets", headers, 2, "datasets", dataset_status="Initialed") == \
        [d["datasetName"] for d in client.list_datasets(["Initialed"])]
    default = requests.get(f"{middleware.url}/datasets", headers=headers, timeout=10).json()
    assert len(default["datasets"]) == min(len(whole), 100) and (default["last_key"] is None) == (len(whole) <= 100)
    monkeypatch.setattr("aws_extension.client.api.LIST_PAGE_MAX", 2)  # the client follows the pages
    assert [d["datasetName"] for d in client.list_datasets()] == whole
    bad = requests.get(f"{middleware.url}/datasets", params={"last_key": "no-such-dataset"}, headers=headers, timeout=10)
    assert bad.status_code == 400 and "last_key" in bad.json()["error"]
    too_many = requests.get(f"{middleware.url}/datasets", params={"limit": 1001}, headers=headers, timeout=10)
    assert too_many.status_code == 422
