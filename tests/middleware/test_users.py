"""Users, keys, roles, route permissions and the audit trail (issue 14) on a real stack of each backend.

The stack is this module's own (`users_api`), so the last-administrator test knows every administrator
there is: it is the only test here that makes users with the admin role.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from aws_extension.middleware.permissions import ROUTE_PERMISSIONS
from aws_extension.middleware.records import API_KEYS
from tests.conftest import start_api
from tests.helpers import REPO
from tests.middleware.conftest import API_KEY
from tests.middleware.test_cli import sd_aws

ISSUED_KEYS: list[str] = []  # every key made here: none may appear in the audit trail


@pytest.fixture(scope="module")
def users_api(backend, request, tmp_path_factory):
    server, _ = start_api(backend, request, tmp_path_factory.mktemp(f"users-{backend}") / "data", API_KEY)
    yield server
    server.stop()


class Api:
    def __init__(self, url: str, key: str):
        self.url, self.key = url, key

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, headers={"x-api-key": self.key}, timeout=30, **kwargs)


@pytest.fixture
def admin(users_api) -> Api:
    return Api(users_api.url, API_KEY)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_user(admin: Api, roles: list[str], **expiry) -> tuple[str, Api, str]:
    """A new user: its name, an Api with its key, the key's id."""
    name = unique("u")
    answer = admin("POST", "/users", json={"username": name, "roles": roles, **expiry})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["username"] == name and body["roles"] == roles and body["user"]["username"] == name
    ISSUED_KEYS.append(body["api_key"])
    return name, Api(admin.url, body["api_key"]), body["key_id"]


def test_a_created_users_key_works_and_names_it(admin, users_api):
    name, user, key_id = make_user(admin, ["user"])
    assert user.key.startswith(f"sdk_{key_id}_")
    me = user("GET", "/inference/test-connection").json()
    assert me["message"] == "Success" and me["username"] == name and me["roles"] == ["user"]
    assert "inference:all" in me["permissions"] and "user:all" not in me["permissions"]
    bearer = requests.get(f"{users_api.url}/inference/test-connection", timeout=10,
                          headers={"Authorization": f"Bearer {user.key}"})
    assert bearer.json()["username"] == name
    listed = admin("GET", "/users", params={"limit": 1000}).json()["users"]
    assert name in [u["username"] for u in listed] and all("api_key" not in u for u in listed)
    keys = admin("GET", f"/users/{name}/keys").json()["keys"]
    assert [(k["key_id"], k["status"], k["expires"]) for k in keys] == [(key_id, "active", None)]
    assert user.key not in json.dumps(keys)


def test_the_bootstrap_key_is_the_bootstrap_administrator(admin, users_api):
    me = admin("GET", "/inference/test-connection").json()
    assert me["username"] == "admin" and me["roles"] == ["admin"] and "user:all" in me["permissions"]
    assert requests.get(f"{users_api.url}/endpoints", timeout=10).status_code == 401
    wrong = requests.get(f"{users_api.url}/endpoints", headers={"x-api-key": "sdk_nope_nope"}, timeout=10)
    assert wrong.status_code == 403 and "not valid" in wrong.json()["error"]
    name, user, key_id = make_user(admin, ["user"])
    forged = Api(admin.url, f"sdk_{key_id}_{'x' * 43}")  # a real key id with a wrong secret
    assert forged("GET", "/endpoints").status_code == 403


def test_a_user_without_the_endpoint_permission_gets_403_naming_it(admin):
    name, user, _ = make_user(admin, ["user"])
    deploy = user("POST", "/endpoints", json={"instance_type": "local", "initial_instance_count": 1})
    delete = user("DELETE", "/endpoints", json={"delete_endpoint_list": ["anything"]})
    for refused in (deploy, delete):
        assert refused.status_code == 403, refused.text
        assert "sagemaker_endpoint:all" in refused.json()["error"] and name in refused.json()["error"]
    assert user("GET", "/endpoints").status_code == 200  # the user role may list them
    assert user("POST", "/users", json={"username": unique("x"), "roles": ["user"]}).status_code == 403
    # the permission is checked before the body: a bad body learns no more than a good one
    for body in (b"{not json", b'{"role_name": 1}', b'{"role_name": "r", "permissions": ["user:all"]}'):
        assert user("POST", "/roles", data=body).status_code == 403, body


def test_revoked_and_expired_keys_are_401_at_once(admin):
    name, user, first_id = make_user(admin, ["user"])
    second = admin("POST", f"/users/{name}/keys").json()
    ISSUED_KEYS.append(second["api_key"])
    rotated = Api(admin.url, second["api_key"])
    assert rotated("GET", "/inference/test-connection").json()["username"] == name
    revoked = admin("DELETE", f"/users/{name}/keys/{first_id}")
    assert revoked.status_code == 200 and revoked.json()["key"]["status"] == "revoked"
    refused = user("GET", "/inference/test-connection")
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert user("POST", "/dataset", data=b"{not json").status_code == 401  # the body guard refuses it too
    assert rotated("GET", "/inference/test-connection").status_code == 200  # rotation without downtime
    assert admin("DELETE", f"/users/{name}/keys/{uuid.uuid4()}").status_code == 404

    expires_at = datetime.now(timezone.utc) + timedelta(seconds=2)
    short = admin("POST", f"/users/{name}/keys", json={"expires_at": expires_at.isoformat()}).json()
    ISSUED_KEYS.append(short["api_key"])
    expiring = Api(admin.url, short["api_key"])
    assert abs(short["expires"] - expires_at.timestamp()) < 1e-3
    assert expiring("GET", "/inference/test-connection").status_code == 200
    time.sleep(max(0.0, expires_at.timestamp() - time.time()) + 0.2)
    expired = expiring("GET", "/inference/test-connection")
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    statuses = {k["key_id"]: k["status"] for k in admin("GET", f"/users/{name}/keys").json()["keys"]}
    assert statuses == {first_id: "revoked", second["key_id"]: "active", short["key_id"]: "expired"}
    for bad in ({"expires_in_days": 0}, {"expires_at": "2001-01-01T00:00:00Z"}, {"expires_at": "soon"},
                {"expires_in_days": 1, "expires_at": "2099-01-01T00:00:00Z"}):
        assert admin("POST", f"/users/{name}/keys", json=bad).status_code == 400, bad


def test_deleting_a_user_stops_its_keys_and_keeps_its_name(admin):
    name, user, _ = make_user(admin, ["user"], expires_in_days=30)
    assert user("GET", "/inference/test-connection").status_code == 200
    deleted = admin("DELETE", f"/users/{name}")
    assert deleted.status_code == 200 and deleted.json()["user"]["status"] == "deleted"
    refused = user("GET", "/inference/test-connection")
    assert refused.status_code == 401 and "deleted" in refused.json()["error"]
    assert name not in [u["username"] for u in admin("GET", "/users", params={"limit": 1000}).json()["users"]]
    again = admin("POST", "/users", json={"username": name, "roles": ["user"]})
    assert again.status_code == 409 and "reserved" in again.json()["error"]
    assert admin("DELETE", f"/users/{name}").status_code == 404
    assert admin("POST", f"/users/{name}/keys").status_code == 404


def test_bad_input_is_refused_clearly(admin):
    name, _, _ = make_user(admin, ["user"])
    duplicate = admin("POST", "/users", json={"username": name, "roles": ["user"]})
    assert duplicate.status_code == 409 and "exists" in duplicate.json()["error"]
    unknown_role = admin("POST", "/users", json={"username": unique("u"), "roles": ["user", "wizard"]})
    assert unknown_role.status_code == 400 and "'wizard'" in unknown_role.json()["error"]
    assert admin("POST", "/users", json={"username": "admin", "roles": ["user"]}).status_code == 409
    assert admin("POST", "/users", json={"username": "bad name!", "roles": ["user"]}).status_code == 400
    assert admin("POST", "/users", json={"username": unique("u"), "roles": []}).status_code == 400

    unknown_permission = admin("POST", "/roles", json={"role_name": unique("r"), "permissions": ["inference:all",
                                                                                               "fly:all"]})
    assert unknown_permission.status_code == 400
    assert "'fly:all'" in unknown_permission.json()["error"] and "train:list" in unknown_permission.json()["error"]
    role = unique("viewer")
    made = admin("POST", "/roles", json={"role_name": role, "permissions": ["inference:list", "checkpoint:list"],
                                         "max_queued_jobs": 5})
    assert made.status_code == 200 and made.json()["role"]["max_queued_jobs"] == 5
    assert admin("POST", "/roles", json={"role_name": role, "permissions": ["inference:list"]}).status_code == 409
    for built_in in ("admin", "user"):
        assert admin("POST", "/roles", json={"role_name": built_in, "permissions": ["inference:list"]}).status_code == 409
        assert admin("DELETE", f"/roles/{built_in}").status_code == 409
    roles = {r["role_name"]: r for r in admin("GET", "/roles").json()["roles"]}
    assert roles["admin"]["built_in"] and roles["user"]["built_in"] and not roles[role]["built_in"]

    changed = admin("PUT", f"/users/{name}", json={"roles": [role]})
    assert changed.status_code == 200 and changed.json()["user"]["permissions"] == ["checkpoint:list", "inference:list"]
    assigned = admin("DELETE", f"/roles/{role}")
    assert assigned.status_code == 409 and name in assigned.json()["error"]
    admin("PUT", f"/users/{name}", json={"roles": ["user"]})
    assert admin("DELETE", f"/roles/{role}").status_code == 200
    assert admin("DELETE", f"/roles/{role}").status_code == 404


def test_a_viewer_role_reads_but_cannot_change(admin):
    role = unique("reader")
    admin("POST", "/roles", json={"role_name": role, "permissions": ["sagemaker_endpoint:list", "user:list"]})
    name, viewer, _ = make_user(admin, [role])
    assert viewer("GET", "/endpoints").status_code == 200 and viewer("GET", "/users").status_code == 200
    refused = viewer("GET", "/inference/list-inference-jobs")
    assert refused.status_code == 403 and "inference:list" in refused.json()["error"]
    assert viewer("DELETE", f"/users/{name}").status_code == 403
    assert viewer("GET", "/audit").status_code == 403  # administrators only


def test_the_last_administrator_cannot_go(admin):
    first, first_api, _ = make_user(admin, ["admin"])
    demoted = first_api("PUT", f"/users/{first}", json={"roles": ["user"]})
    assert demoted.status_code == 409 and "last administrator" in demoted.json()["error"]
    assert first_api("DELETE", f"/users/{first}").status_code == 409
    second, second_api, _ = make_user(first_api, ["user", "admin"])
    assert first_api("PUT", f"/users/{first}", json={"roles": ["user"]}).status_code == 200
    assert second_api("DELETE", f"/users/{second}").status_code == 409
    assert first_api("GET", "/inference/test-connection").json()["roles"] == ["user"]  # at once
    assert first_api("POST", "/users", json={"username": unique("x"), "roles": ["user"]}).status_code == 403


def _audit(admin: Api, **params) -> list[dict]:
    entries, last_key = [], None
    while True:
        page = admin("GET", "/audit", params={**params, "limit": 50, **({"last_key": last_key} if last_key else {})})
        assert page.status_code == 200, page.text
        entries += page.json()["entries"]
        last_key = page.json()["last_key"]
        if not last_key:
            return entries


def test_the_audit_trail_records_changes_and_holds_no_key(admin):
    since = time.time()
    name, user, key_id = make_user(admin, ["user"])
    role = unique("auditor")
    admin("POST", "/roles", json={"role_name": role, "permissions": ["user:list"]})
    assert admin("POST", "/roles", json={"role_name": role, "permissions": ["user:list"]}).status_code == 409
    admin("DELETE", f"/users/{name}/keys/{key_id}")
    admin("DELETE", f"/roles/{role}")
    admin("DELETE", f"/users/{name}")
    recent = _audit(admin, since=datetime.fromtimestamp(since, timezone.utc).isoformat())
    actions = [(e["action"], e["record_ids"]) for e in reversed(recent)]
    assert actions == [("POST /users", [name, key_id]), ("POST /roles", [role]),
                       ("DELETE /users/{username}/keys/{key_id}", [name, key_id]),
                       ("DELETE /roles/{role_name}", [role]), ("DELETE /users/{username}", [name])]
    assert all(e["actor"] == "admin" and e["key_id"] is None and e["status"] == 200 for e in recent)
    assert recent[0]["path_params"] == {"username": name}
    assert all(e["created"] >= since for e in recent)
    assert [e["action"] for e in _audit(admin, actor=name)] == []  # the user changed nothing
    everything = json.dumps(_audit(admin))
    assert ISSUED_KEYS and not [key for key in ISSUED_KEYS if key in everything]
    assert API_KEY not in everything and "sdk_" not in everything
    assert admin("GET", "/audit", params={"since": "yesterday"}).status_code == 400


def test_a_users_changes_name_them_in_the_audit_trail(admin):
    role = unique("keeper")
    admin("POST", "/roles", json={"role_name": role, "permissions": ["checkpoint:all", "user:list"]})
    name, user, key_id = make_user(admin, [role])
    made = user("POST", "/checkpoint", json={"checkpoint_type": "Lora", "filenames": [
        {"filename": "audited.safetensors", "parts_number": 1}], "params": {}})
    assert made.status_code == 200, made.text
    (entry,) = _audit(admin, actor=name)
    assert entry["action"] == "POST /checkpoint" and entry["key_id"] == key_id
    assert made.json()["checkpoint"]["id"] in entry["record_ids"]
    assert not [i for i in entry["record_ids"] if "://" in i or "?" in i]  # no signed upload URL


@pytest.mark.local_only("the CLI is the same client on every backend")
def test_the_user_and_role_commands(users_api):
    role = unique("cli")
    made = sd_aws(users_api, "role", "create", role, "--permission", "inference:all,checkpoint:list",
                  "--max-queued-jobs", "3")
    assert made.returncode == 0 and "inference:all" in made.stdout, made.stderr
    assert role in sd_aws(users_api, "role", "list").stdout
    name = unique("cli")
    created = sd_aws(users_api, "user", "create", name, "--role", role, "--expires-in-days", "7")
    assert created.returncode == 0 and "shown this once" in created.stderr, created.stderr
    key = created.stdout.strip()
    ISSUED_KEYS.append(key)
    assert Api(users_api.url, key)("GET", "/inference/test-connection").json()["username"] == name
    assert name in sd_aws(users_api, "user", "list").stdout
    second = sd_aws(users_api, "user", "key-create", name)
    ISSUED_KEYS.append(second.stdout.strip())
    old_id = key.split("_")[1]
    assert old_id in sd_aws(users_api, "user", "key-list", name).stdout
    assert "revoked" in sd_aws(users_api, "user", "key-revoke", name, old_id).stdout
    assert Api(users_api.url, key)("GET", "/inference/test-connection").status_code == 401
    in_use = sd_aws(users_api, "role", "delete", role)
    assert in_use.returncode == 1 and "HTTP 409" in in_use.stderr
    assert sd_aws(users_api, "user", "delete", name).returncode == 0
    assert sd_aws(users_api, "role", "delete", role).returncode == 0
    refused = sd_aws(users_api, "user", "list", key=second.stdout.strip())
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr


def test_every_route_is_in_the_permission_table(tmp_path):
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient

    from aws_extension.middleware.app import KEYED_ROUTERS, create_app
    from aws_extension.middleware.wiring import build_services
    from aws_extension.settings import MiddlewareSettings, load

    keyed = {(method, route.path) for router in KEYED_ROUTERS for route in router.routes
             if isinstance(route, APIRoute) for method in route.methods}
    assert keyed - ROUTE_PERMISSIONS.keys() == set()  # every route with a key has its permission
    assert ROUTE_PERMISSIONS.keys() - keyed == set()  # and the table names no route that is gone
    app = create_app(build_services(load(MiddlewareSettings, data_dir=tmp_path)), API_KEY)
    documented = {(method.upper(), path) for path, operations in app.openapi()["paths"].items()
                  for method in operations}
    open_routes = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/blobs/{key}"), ("HEAD", "/blobs/{key}"),
                   ("PUT", "/blobs/{key}")}
    assert documented - keyed - open_routes == set()  # no route of the app is outside the keyed routers
    with TestClient(app) as client:  # and the keyed ones do check the key
        for method, path in sorted(keyed):
            assert client.request(method, path.replace("{", "x").replace("}", "")).status_code == 401, path


def test_the_permission_table_in_the_docs_is_the_codes():
    text = (REPO / "docs" / "api-permissions.md").read_text()
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE) (\S+)` \| (?:`([a-z_]+:[a-z]+)`|any valid key) \|$", text, re.MULTILINE)
    assert {(method, path): permission or None for method, path, permission in rows} == {
        key: permission.value if permission else None for key, permission in ROUTE_PERMISSIONS.items()}


class CountingStore:
    """A real SQLite store that counts the calls made on it."""

    def __init__(self, store):
        self.store, self.calls = store, []

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def counted(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)
        return counted


def test_a_key_costs_a_constant_number_of_reads_and_limits_are_the_most_generous(tmp_path):
    from aws_extension.middleware.principals import BOOTSTRAP_ADMIN
    from aws_extension.middleware.services.users import UserService
    from aws_extension.middleware.store.sqlite import SQLiteStore

    store = CountingStore(SQLiteStore(tmp_path / "store.sqlite3"))
    users = UserService(store)
    users.create_role(BOOTSTRAP_ADMIN, "small", ["inference:all"], max_queued_jobs=3, max_concurrent_trainings=1)
    users.create_role(BOOTSTRAP_ADMIN, "large", ["train:all"], max_queued_jobs=10)
    _, key = users.create_user(BOOTSTRAP_ADMIN, "limited", ["small", "large"])
    store.calls.clear()
    principal = users.principal_for_key(key.api_key)
    assert store.calls == ["get", "get", "get", "get"]  # the key, the user, its two roles: no list, no scan
    assert principal.permissions == {"inference:all", "train:all"} and principal.key_id == key.record.id
    assert (principal.max_queued_jobs, principal.max_concurrent_trainings) == (10, None)  # `large` has none
    users.set_roles(BOOTSTRAP_ADMIN, "limited", ["small"])
    assert users.principal_for_key(key.api_key).max_concurrent_trainings == 1
    users.set_roles(BOOTSTRAP_ADMIN, "limited", ["small", "user"])  # a built-in role: no limits
    assert users.principal_for_key(key.api_key).max_queued_jobs is None
    assert users.owner_label("limited") == "limited"
    users.delete_user(BOOTSTRAP_ADMIN, "limited")
    assert users.owner_label("limited") == "deleted user limited"
    stored = json.dumps(store.store.get(API_KEYS, key.record.id))
    assert key.api_key.split("_", 2)[2] not in stored  # only the salted hash is kept
