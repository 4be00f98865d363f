"""The "Users" sub-tab of the Amazon SageMaker tab, for administrators (a key with `user:all`): users (list,
create, delete, set roles), their keys (make a new one, revoke an old one by id: rotation), and roles (list,
create with permissions as checkboxes, delete).

Pure gradio + the client, like the other sub-tabs: the handlers are plain methods the tests call; each runs
with the connection of the WebUI user who clicked (`per_user`). A new key is shown once, in its own field.
"""

from __future__ import annotations

from typing import Any

from aws_extension.client import ApiError
from aws_extension.ui.compat import gr
from aws_extension.ui.connection import ConnectionStore, make_client, per_user
from aws_extension.ui.sagemaker_tab import failed, ok, table, when
from aws_extension.vocabulary import USER_ROLE, Permission

USER_HEADERS = ["user", "roles", "status", "created", "creator"]
KEY_HEADERS = ["key id", "status", "created", "expires", "revoked"]
ROLE_HEADERS = ["role", "permissions", "built in", "max queued jobs", "max concurrent trainings"]
NEW_KEY_HINT = "Copy this key now and give it to its user: it is shown only this once (the middleware keeps a hash)."


def new_key_update(api_key: str | None) -> Any:
    """The one-time key field: shown with the key, or hidden and emptied."""
    return gr.update(value=api_key or "", visible=bool(api_key))


class UsersTab:
    def __init__(self, store: ConnectionStore):
        self.store = store

    # -- users ---------------------------------------------------------------------------------------------
    @per_user
    def user_table(self) -> tuple[dict, Any, str]:
        """Every active user (all pages), and the user choices."""
        try:
            client, users, last_key = make_client(self.store), [], None
            while True:
                page = client.list_users(last_key=last_key)
                users += page["users"]
                last_key = page.get("last_key")
                if not last_key:
                    break
        except ApiError as exc:
            return table(USER_HEADERS, []), gr.update(), failed(exc)
        rows = [[u["username"], ", ".join(u.get("roles") or []), u.get("status", ""), when(u.get("created")),
                 u.get("creator") or ""] for u in users]
        return table(USER_HEADERS, rows), gr.update(choices=[r[0] for r in rows]), ok(f"{len(rows)} user(s).")

    @per_user
    def create_user(self, username: str, roles: list[str] | None) -> tuple[str, Any]:
        """The new user and its first key, shown once."""
        if not (username or "").strip():
            return failed("Enter the new user's name."), new_key_update(None)
        if not roles:
            return failed("Choose at least one role for the new user."), new_key_update(None)
        try:
            answer = make_client(self.store).create_user(username.strip(), list(roles))
        except ApiError as exc:
            return failed(exc), new_key_update(None)
        return (ok(f"User {answer['username']} created with roles {', '.join(answer['roles'])} and key "
                   f"{answer['key_id']}. {NEW_KEY_HINT}"), new_key_update(answer["api_key"]))

    def ask_delete_user(self, username: str | None) -> tuple[Any, str]:
        if not username:
            return gr.update(visible=False), failed("Choose the user to delete.")
        return gr.update(visible=True), (f"Confirm: Delete {username}? Their keys stop at once and the name cannot "
                                         "be given to anyone again.")

    @per_user
    def delete_user(self, username: str | None) -> str:
        if not username:
            return failed("Choose the user to delete.")
        try:
            make_client(self.store).delete_user(username)
        except ApiError as exc:
            return failed(exc)
        return ok(f"Deleted {username}: their keys stopped working; their jobs and trainings stay, owned by "
                  f"\"deleted user {username}\".")

    @per_user
    def set_roles(self, username: str | None, roles: list[str] | None) -> str:
        if not username:
            return failed("Choose the user whose roles to set.")
        if not roles:
            return failed("Choose at least one role (to take every right away, delete the user).")
        try:
            user = make_client(self.store).set_user_roles(username, list(roles))
        except ApiError as exc:
            return failed(exc)
        return ok(f"{username} now has the roles {', '.join(user['roles'])} (from their next request).")

    # -- keys ----------------------------------------------------------------------------------------------
    @per_user
    def key_table(self, username: str | None) -> tuple[dict, Any, str]:
        """The user's keys (never the keys themselves: their ids) and the active ones as revoke choices."""
        if not username:
            return table(KEY_HEADERS, []), gr.update(choices=[], value=None), failed("Choose a user.")
        try:
            keys = make_client(self.store).list_keys(username)
        except ApiError as exc:
            return table(KEY_HEADERS, []), gr.update(), failed(exc)
        rows = [[k["key_id"], k.get("status", ""), when(k.get("created")), when(k.get("expires")) or "never",
                 when(k.get("revoked"))] for k in keys]
        active = [k["key_id"] for k in keys if k.get("status") == "active"]
        return (table(KEY_HEADERS, rows), gr.update(choices=active, value=None),
                ok(f"{username}: {len(active)} active key(s) of {len(rows)}."))

    @per_user
    def create_key(self, username: str | None, expires_in_days: float | None = None) -> tuple[str, Any]:
        """A new key for the user (the old ones keep working until revoked), shown once."""
        if not username:
            return failed("Choose the user who gets a new key."), new_key_update(None)
        days = float(expires_in_days) if expires_in_days else None  # 0 or empty: never expires
        try:
            answer = make_client(self.store).create_key(username, expires_in_days=days)
        except ApiError as exc:
            return failed(exc), new_key_update(None)
        expiry = f", expires {when(answer.get('expires'))}" if answer.get("expires") else ""
        return (ok(f"New key {answer['key_id']} for {username}{expiry}. {NEW_KEY_HINT} Revoke the old key once "
                   "its clients use this one."), new_key_update(answer["api_key"]))

    @per_user
    def revoke_key(self, username: str | None, key_id: str | None) -> str:
        if not username or not key_id:
            return failed("Choose the user and the key id to revoke.")
        try:
            make_client(self.store).revoke_key(username, key_id)
        except ApiError as exc:
            return failed(exc)
        return ok(f"Revoked key {key_id} of {username}: it stops working at once.")

    # -- roles ---------------------------------------------------------------------------------------------
    @per_user
    def role_table(self) -> tuple[dict, Any, Any, Any, str]:
        """The roles, and the role choices: of the new user, of the user's roles, of the role to delete (only
        the ones made here: built-in roles cannot be deleted)."""
        try:
            roles = make_client(self.store).list_roles()
        except ApiError as exc:
            return table(ROLE_HEADERS, []), gr.update(), gr.update(), gr.update(), failed(exc)
        rows = [[r["role_name"], ", ".join(r.get("permissions") or []), "yes" if r.get("built_in") else "",
                 "" if r.get("max_queued_jobs") is None else r["max_queued_jobs"],
                 "" if r.get("max_concurrent_trainings") is None else r["max_concurrent_trainings"]] for r in roles]
        names = [r["role_name"] for r in roles]
        made_here = [r["role_name"] for r in roles if not r.get("built_in")]
        return (table(ROLE_HEADERS, rows), gr.update(choices=names), gr.update(choices=names),
                gr.update(choices=made_here, value=None), ok(f"{len(rows)} role(s)."))

    @per_user
    def create_role(self, role_name: str, permissions: list[str] | None) -> str:
        if not (role_name or "").strip():
            return failed("Enter the new role's name.")
        if not permissions:
            return failed("Tick at least one permission for the role.")
        try:
            role = make_client(self.store).create_role(role_name.strip(), list(permissions))
        except ApiError as exc:
            return failed(exc)
        return ok(f"Role {role['role_name']} created with {', '.join(role['permissions'])}.")

    @per_user
    def delete_role(self, role_name: str | None) -> str:
        if not role_name:
            return failed("Choose the role to delete.")
        try:
            make_client(self.store).delete_role(role_name)
        except ApiError as exc:
            return failed(exc)
        return ok(f"Deleted role {role_name}.")

    # -- layout --------------------------------------------------------------------------------------------
    def render(self) -> Any:
        """The sub-tab's components in the current gradio context, in one Column (returned: shown only to
        administrators)."""
        with gr.Column() as column:
            status = gr.Markdown(elem_id="sd_aws_users_status")
            new_key = gr.Textbox(label="New API key (shown once: copy it now)", interactive=False, visible=False,
                                 elem_id="sd_aws_new_key")
            refresh = gr.Button("Refresh", elem_id="sd_aws_users_refresh")
            users = gr.Dataframe(headers=USER_HEADERS, interactive=False, elem_id="sd_aws_users_table")
            with gr.Accordion("Create a user", open=False):
                with gr.Row():
                    new_name = gr.Textbox(label="User name", elem_id="sd_aws_new_user_name")
                    new_roles = gr.Dropdown(label="Roles", choices=[USER_ROLE], value=[USER_ROLE], multiselect=True,
                                            elem_id="sd_aws_new_user_roles")
                create = gr.Button("Create user", variant="primary", elem_id="sd_aws_create_user")
            with gr.Accordion("A user's roles and keys", open=False):
                with gr.Row():
                    user = gr.Dropdown(label="User", choices=[], elem_id="sd_aws_user_choice")
                    user_roles = gr.Dropdown(label="Roles", choices=[], multiselect=True,
                                             elem_id="sd_aws_user_roles")
                    set_roles = gr.Button("Set roles", elem_id="sd_aws_set_roles")
                keys = gr.Dataframe(headers=KEY_HEADERS, interactive=False, elem_id="sd_aws_keys_table")
                with gr.Row():
                    expires = gr.Number(label="New key expires in days (0: never)", value=0, precision=0,
                                        elem_id="sd_aws_key_expires")
                    create_key = gr.Button("New key", elem_id="sd_aws_create_key")
                with gr.Row():
                    key_id = gr.Dropdown(label="Key id to revoke", choices=[], elem_id="sd_aws_key_choice")
                    revoke = gr.Button("Revoke key", variant="stop", elem_id="sd_aws_revoke_key")
                delete_user = gr.Button("Delete user", variant="stop", elem_id="sd_aws_delete_user")
                with gr.Row(visible=False) as confirm_row:
                    confirm = gr.Button("Yes, delete the user", variant="stop", elem_id="sd_aws_confirm_delete_user")
                    cancel = gr.Button("Cancel", elem_id="sd_aws_cancel_delete_user")
            with gr.Accordion("Roles", open=False):
                roles = gr.Dataframe(headers=ROLE_HEADERS, interactive=False, elem_id="sd_aws_roles_table")
                with gr.Row():
                    role_name = gr.Textbox(label="Role name", elem_id="sd_aws_role_name")
                    permissions = gr.CheckboxGroup(label="Permissions", choices=list(Permission.values()),
                                                   elem_id="sd_aws_role_permissions")
                create_role = gr.Button("Create role", elem_id="sd_aws_create_role")
                with gr.Row():
                    role_to_delete = gr.Dropdown(label="Role to delete", choices=[], elem_id="sd_aws_role_choice")
                    delete_role = gr.Button("Delete role", variant="stop", elem_id="sd_aws_delete_role")

        role_outputs = [roles, new_roles, user_roles, role_to_delete, status]
        refresh.click(self.user_table, None, [users, user, status]).then(self.role_table, None, role_outputs)
        create.click(self.create_user, [new_name, new_roles], [status, new_key]).then(
            self.user_rows, None, [users, user])
        user.change(self.key_table, [user], [keys, key_id, status])
        set_roles.click(self.set_roles, [user, user_roles], [status]).then(self.user_rows, None, [users, user])
        create_key.click(self.create_key, [user, expires], [status, new_key]).then(
            self.key_rows, [user], [keys, key_id])
        revoke.click(self.revoke_key, [user, key_id], [status]).then(self.key_rows, [user], [keys, key_id])
        delete_user.click(self.ask_delete_user, [user], [confirm_row, status])
        confirm.click(lambda: gr.update(visible=False), None, [confirm_row]).then(
            self.delete_user, [user], [status]).then(self.user_rows, None, [users, user])
        cancel.click(lambda: (gr.update(visible=False), ""), None, [confirm_row, status])
        create_role.click(self.create_role, [role_name, permissions], [status]).then(
            self.role_rows, None, role_outputs[:-1])
        delete_role.click(self.delete_role, [role_to_delete], [status]).then(self.role_rows, None, role_outputs[:-1])
        for event in (refresh.click, create_role.click, delete_role.click, set_roles.click):
            event(lambda: new_key_update(None), None, [new_key])  # a key shown once goes with the next action
        return column

    # the tables again after an action, without its message
    @per_user
    def user_rows(self) -> tuple[dict, Any]:
        rows, choices, _ = self.user_table()
        return rows, choices

    @per_user
    def key_rows(self, username: str | None) -> tuple[dict, Any]:
        rows, choices, _ = self.key_table(username)
        return rows, choices

    @per_user
    def role_rows(self) -> tuple[dict, Any, Any, Any]:
        return self.role_table()[:-1]
