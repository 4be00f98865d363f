"""Issue 14, the extension: who the key is, the controls hidden from a key that may not use them, the Users
sub-tab, and per-WebUI-user keys (--gradio-auth) in the host stand-in, against a real middleware."""

from __future__ import annotations

import stat
import uuid

import pytest

from aws_extension.client import ApiError, MiddlewareClient
from aws_extension.ui.compat import gr
from aws_extension.ui.connection import Access, MemoryConnectionStore, per_user
from aws_extension.ui.sagemaker_tab import SageMakerTab
from aws_extension.ui.users_tab import UsersTab
from aws_extension.vocabulary import Permission
from tests.ui.conftest import API_KEY, STACK_ENDPOINT, STACK_KEY
from tests.ui.test_end_to_end import webui_on_stack  # noqa: F401 - a fixture
from tests.webui.conftest import make_p, switch_runner, webui  # noqa: F401 - webui is a fixture


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(middleware) -> MiddlewareClient:
    return MiddlewareClient(middleware.url, API_KEY)


@pytest.fixture
def user_key(admin) -> tuple[str, str]:
    """A user with the built-in `user` role and its key."""
    name = unique("alice")
    return name, admin.create_user(name, ["user"])["api_key"]


def rendered(store) -> SageMakerTab:
    tab = SageMakerTab(store)
    with gr.Blocks(analytics_enabled=False):
        tab.render()
    return tab


def shown(tab: SageMakerTab) -> dict[str, bool]:
    """What access_updates shows, by permission (every component of a gate alike) and its note's text."""
    updates = tab.access_updates()[1:]
    result, index = {}, 0
    for gate in tab.gates:
        components = updates[index:index + len(gate.components)]
        note = updates[index + len(gate.components)]
        index += len(gate.components) + 1
        assert len({u["visible"] for u in components}) == 1 and note["visible"] != components[0]["visible"]
        result[str(gate.permission)] = components[0]["visible"]
        if not components[0]["visible"]:
            assert note["value"] == f"Not shown: your key's roles do not include {gate.permission}."
    return result


def test_a_user_key_sees_who_it_is_and_not_what_it_may_not_do(middleware, user_key):
    name, key = user_key
    tab = rendered(MemoryConnectionStore(middleware.url, key))
    assert tab.access_updates()[0] == f"Connected as {name} (roles: user)"
    assert tab.test_connection(middleware.url, "").endswith(f"the API key is accepted. It is {name}'s (roles: user).")
    assert shown(tab) == {"checkpoint:all": False, "sagemaker_endpoint:all": False, "train:all": True,
                          "user:all": False}
    assert "sagemaker_endpoint:all" in tab.deploy_endpoint("local", 1, False, 0, 1, "")  # refused anyway

    admin_tab = rendered(MemoryConnectionStore(middleware.url, API_KEY))
    assert admin_tab.access_updates()[0] == "Connected as admin (roles: admin)"
    assert set(shown(admin_tab).values()) == {True}

    # re-evaluated when the settings change: the same tab saved with the admin key shows everything
    tab.save_settings(middleware.url, API_KEY)
    assert set(shown(tab).values()) == {True}


def test_a_key_that_cannot_be_asked_shows_everything_and_says_why(middleware):
    tab = rendered(MemoryConnectionStore(middleware.url, "wrong-key"))
    who, *updates = tab.access_updates()
    assert who == "Error: The middleware refused the API key: check the key in Settings."
    assert set(shown(tab).values()) == {True}


def test_an_older_middleware_that_does_not_say_who_is_just_connected():
    old = Access.of({"message": "Success"})
    assert old.who() == "Connected" and old.may(Permission.USER_ALL) and old.may("train:all")
    user = Access.of({"message": "Success", "username": "bob", "roles": ["user"],
                      "permissions": ["inference:all", "checkpoint:list"]})
    assert user.may("checkpoint:list") and user.may("inference:list") and not user.may("checkpoint:all")


def test_users_sub_tab_creates_rotates_and_deletes(middleware, admin):
    tab = UsersTab(MemoryConnectionStore(middleware.url, API_KEY))
    name = unique("carol")
    assert tab.create_user("", ["user"])[0] == "Error: Enter the new user's name."
    assert tab.create_user(name, [])[0] == "Error: Choose at least one role for the new user."
    message, key_field = tab.create_user(name, ["user"])
    first_key = key_field["value"]
    assert message.startswith(f"Done: User {name} created") and "shown only this once" in message
    assert key_field["visible"] and first_key not in message
    assert MiddlewareClient(middleware.url, first_key).whoami()["username"] == name
    message, key_field = tab.create_user(name, ["user"])
    assert message == f"Error: The user {name} exists." and (key_field["value"], key_field["visible"]) == ("", False)

    rows, choices, status = tab.user_table()
    assert [name, "user", "active"] == [r for r in rows["data"] if r[0] == name][0][:3] and name in choices["choices"]

    # rotation: a new key works beside the old one; the old one revoked stops at once
    message, key_field = tab.create_key(name, 30)
    second_key = key_field["value"]
    assert message.startswith("Done: New key") and ", expires " in message and second_key != first_key
    keys, key_choices, _ = tab.key_table(name)
    assert len(keys["data"]) == 2 and len(key_choices["choices"]) == 2
    assert {MiddlewareClient(middleware.url, key).whoami()["username"] for key in (first_key, second_key)} == {name}
    first_id = first_key.split("_")[1]
    assert tab.revoke_key(name, first_id) == f"Done: Revoked key {first_id} of {name}: it stops working at once."
    with pytest.raises(ApiError) as refused:
        MiddlewareClient(middleware.url, first_key).whoami()
    assert refused.value.status == 401
    assert tab.key_table(name)[1]["choices"] == [second_key.split("_")[1]]

    # roles: a role with permissions as checkboxes, given to the user, then the user deleted and the role too
    role = unique("viewers")
    assert tab.create_role(role, []).startswith("Error: Tick at least one permission")
    assert tab.create_role(role, ["inference:list", "checkpoint:list"]).startswith(f"Done: Role {role} created")
    role_rows, new_user_roles, user_roles, deletable, _ = tab.role_table()
    assert role in deletable["choices"] and "admin" not in deletable["choices"] and "admin" in user_roles["choices"]
    assert tab.set_roles(name, [role]).startswith(f"Done: {name} now has the roles {role}")
    assert MiddlewareClient(middleware.url, second_key).whoami()["permissions"] == ["checkpoint:list",
                                                                                    "inference:list"]
    assert tab.delete_role(role).startswith(f"Error: The role {role} is assigned to {name}")
    assert tab.ask_delete_user(name)[1].startswith(f"Confirm: Delete {name}?")
    assert tab.delete_user(name).startswith(f"Done: Deleted {name}")
    with pytest.raises(ApiError):
        MiddlewareClient(middleware.url, second_key).whoami()
    assert tab.delete_role(role) == f"Done: Deleted role {role}."


def test_a_user_key_cannot_use_the_users_sub_tab(middleware, user_key):
    tab = UsersTab(MemoryConnectionStore(middleware.url, user_key[1]))
    assert "lacks the permission user:list" in tab.user_table()[2]


def test_per_user_passes_the_request_and_keeps_its_generator_and_progress():
    class Store(MemoryConnectionStore):
        def for_user(self, username):
            return MemoryConnectionStore(f"http://{username}.test", username) if username else self

    class Tab:
        def __init__(self):
            self.store = Store("http://shared.test", None)

        @per_user
        def key(self, text: str, progress=gr.Progress()) -> str:
            return f"{text}:{self.store.api_key()}"

        @per_user
        def keys(self, count: int):
            for _ in range(count):
                yield self.store.api_key()

    tab = Tab()
    assert tab.key("a") == "a:None"  # no request: the object's own store
    assert tab.key("a", None, gr.Request(username="ann")) == "a:ann"
    assert list(tab.keys(2, request=gr.Request(username="bo"))) == ["bo", "bo"]
    assert tab.store.api_key() is None  # the tab itself is unchanged


def test_two_gradio_users_have_their_own_key_file_and_their_cloud_jobs_go_with_it(webui_on_stack, stack,  # noqa: F811
                                                                                   monkeypatch):
    """A WebUI with --gradio-auth: each user's Settings are a 0600 file of their own; the switch and the tab
    send with the key of the user who clicked (A1111 puts request.username on p.user)."""
    from aws_extension.webui import host

    host_webui = webui_on_stack
    monkeypatch.setattr(host_webui.shared.cmd_opts, "gradio_auth", "ann:pw1,ben:pw2", raising=False)
    from aws_extension.webui.callbacks import add_settings

    add_settings()  # the WebUI's own Settings page says its key field is no longer everyone's
    assert host_webui.shared.opts.data_labels[host.API_KEY_OPTION].label.startswith("Shared API key, for the WebUI's API")
    names = {who: unique(who) for who in ("ann", "ben")}
    keys = {who: stack.client.create_user(name, ["user"])["api_key"] for who, name in names.items()}
    tab = SageMakerTab(host.WebUIConnectionStore(), host.model_folders())
    for who in names:
        message, _ = tab.save_settings(stack.url, keys[who], request=gr.Request(username=who))
        assert message.startswith("Done: Saved")
    files = {who: host.user_settings_file(who) for who in names}
    assert files["ann"] != files["ben"] and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files.values())
    assert keys["ann"] in files["ann"].read_text() and keys["ann"] not in files["ben"].read_text()
    assert host.key_file().read_text() == STACK_KEY  # the WebUI's shared key is untouched
    for who in names:
        assert tab.access_updates(request=gr.Request(username=who))[0] == f"Connected as {names[who]} (roles: user)"
    assert tab.saved_settings(request=gr.Request(username="nobody"))[1]["placeholder"] == "no API key saved"
    from aws_extension.webui.switch import refresh_endpoints

    assert STACK_ENDPOINT in refresh_endpoints(gr.Request(username="ann"))[0]["choices"]  # the switch's list
    assert "asks for an API key" in refresh_endpoints(gr.Request(username="nobody"))[1]  # no key of their own

    runner = switch_runner(host_webui)
    since = stack.client.audit_trail(limit=1)["entries"][0]["time"]
    for who in names:
        p = make_p(host_webui, runner, on=True, endpoint=STACK_ENDPOINT, prompt=f"a {who}", negative_prompt="",
                   steps=2, do_not_save_samples=True, do_not_save_grid=True)
        p.user = who  # what A1111's txt2img does with the page's gr.Request
        assert len(host_webui.processing.process_images(p).images) == 1
    jobs = [e for e in stack.client.audit_trail(since=since)["entries"] if e["action"] == "POST /inference/v2"]
    assert sorted(e["actor"] for e in jobs) == sorted(names.values())
    # and each sees only their own job in the Jobs tab (the middleware lists a key's own jobs)
    for who in names:
        rows = tab.job_table(request=gr.Request(username=who))[0]["data"]
        own = {i for e in jobs if e["actor"] == names[who] for i in e["record_ids"]}
        assert len(rows) == 1 and rows[0][0] in own, (who, rows, jobs)

    # without a user (the WebUI's API, or no gradio auth) the shared key as before
    monkeypatch.setattr(host_webui.shared.cmd_opts, "gradio_auth", None)
    assert host.WebUIConnectionStore().for_user("ann").api_key() == STACK_KEY


def test_browser_two_gradio_users_each_see_their_own_key_and_a_user_is_not_offered_deploy(middleware, user_key):
    """The tabs served with gradio auth, in Debian's Chromium: each person logs in and the page asks with their
    own key (gradio's request reaches the handlers): the user sees who they are and no Deploy button, the line
    saying why in its place; the administrator sees Deploy."""
    from tests.ui.test_browser import CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is installed by .ci/ui.sh")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by .ci/ui.sh")
    from tests.helpers import free_port
    from tests.ui.test_browser import CHROMIUM_ARGS, open_tab

    name, key = user_key
    keys = {"ann": key, "root": API_KEY}

    class OneKeyPerPerson(MemoryConnectionStore):  # as the WebUI's store with --gradio-auth
        def for_user(self, username):
            return MemoryConnectionStore(middleware.url, keys[username]) if username else self

    tab = SageMakerTab(OneKeyPerPerson(middleware.url, None))
    with gr.Blocks(analytics_enabled=False) as app, gr.Tabs(), gr.Tab("Amazon SageMaker"):
        tab.render()
    app.queue()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
               auth=[("ann", "pw-ann"), ("root", "pw-root")])
    expect = sync_api.expect
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                pages = {}
                for person in keys:  # one browser context each: their own login cookie
                    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
                    page.goto(f"http://127.0.0.1:{port}", wait_until="domcontentloaded")
                    page.locator("input").first.fill(person)
                    page.locator("input[type=password]").fill(f"pw-{person}")
                    page.get_by_role("button", name="Login").click()
                    open_tab(page, "Amazon SageMaker")
                    pages[person] = page
                ann, root = pages["ann"], pages["root"]
                expect(ann.locator("#sd_aws_connected_as").first).to_contain_text(
                    f"Connected as {name} (roles: user)", timeout=30_000)
                expect(root.locator("#sd_aws_connected_as").first).to_contain_text(
                    "Connected as admin (roles: admin)", timeout=30_000)
                for page in pages.values():
                    open_tab(page, "Endpoints")
                expect(ann.get_by_text(
                    "Not shown: your key's roles do not include sagemaker_endpoint:all").first).to_be_visible()
                expect(ann.locator("#sd_aws_deploy")).to_be_hidden()
                expect(ann.locator("#sd_aws_delete_endpoints")).to_be_hidden()
                expect(ann.locator("#sd_aws_endpoints_refresh")).to_be_visible()  # listing is allowed
                expect(root.locator("#sd_aws_deploy")).to_be_visible()
            finally:
                browser.close()
    finally:
        app.close()
