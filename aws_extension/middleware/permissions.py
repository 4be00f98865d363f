"""The permission each route needs: one table, checked in one place (`auth.authorize`, the routers'
dependency). docs/api-permissions.md is this table in words; `tests/middleware/test_users.py` checks that
every route of the app is in it.

`X:all` allows `X:list` (`vocabulary.grants`). `ANY_KEY`: every valid key may call the route. Which
records a permitted call may see or change (its owner's) is the services' concern, not this table's.
"""

from __future__ import annotations

from aws_extension.vocabulary import Permission

ANY_KEY = None

_CHECKPOINT_ALL, _CHECKPOINT_LIST = Permission.CHECKPOINT_ALL, Permission.CHECKPOINT_LIST
_ENDPOINT_ALL, _ENDPOINT_LIST = Permission.SAGEMAKER_ENDPOINT_ALL, Permission.SAGEMAKER_ENDPOINT_LIST
_INFERENCE_ALL, _INFERENCE_LIST = Permission.INFERENCE_ALL, Permission.INFERENCE_LIST
_TRAIN_ALL, _TRAIN_LIST = Permission.TRAIN_ALL, Permission.TRAIN_LIST
_USER_ALL, _USER_LIST = Permission.USER_ALL, Permission.USER_LIST
_ROLE_ALL, _ROLE_LIST = Permission.ROLE_ALL, Permission.ROLE_LIST

# (method, route template) → the permission it needs.
ROUTE_PERMISSIONS: dict[tuple[str, str], Permission | None] = {
    ("GET", "/inference/test-connection"): ANY_KEY,
    # the catalogue (shared by everyone: changing it is checkpoint:all)
    ("POST", "/checkpoint"): _CHECKPOINT_ALL,
    ("PUT", "/checkpoint"): _CHECKPOINT_ALL,
    ("GET", "/checkpoints"): _CHECKPOINT_LIST,
    ("GET", "/checkpoint/{checkpoint_id}"): _CHECKPOINT_LIST,
    ("DELETE", "/checkpoint/{checkpoint_id}"): _CHECKPOINT_ALL,
    ("POST", "/upload_checkpoint"): _CHECKPOINT_ALL,
    ("GET", "/inference/get-texual-inversion-list"): _CHECKPOINT_LIST,
    ("GET", "/inference/get-textual-inversion-list"): _CHECKPOINT_LIST,
    ("GET", "/inference/get-lora-list"): _CHECKPOINT_LIST,
    ("GET", "/inference/get-hypernetwork-list"): _CHECKPOINT_LIST,
    ("GET", "/inference/get-controlnet-model-list"): _CHECKPOINT_LIST,
    ("POST", "/inference/run-model-merge"): _CHECKPOINT_ALL,  # it writes a new checkpoint into the catalogue
    # endpoints
    ("POST", "/endpoints"): _ENDPOINT_ALL,
    ("DELETE", "/endpoints"): _ENDPOINT_ALL,
    ("GET", "/endpoints"): _ENDPOINT_LIST,
    ("GET", "/inference/get-endpoint-deployment-job"): _ENDPOINT_LIST,
    # inference jobs
    ("POST", "/inference/v2"): _INFERENCE_ALL,
    ("PUT", "/inference/v2/{job_id}/run"): _INFERENCE_ALL,
    ("PUT", "/inference/v2/{job_id}/cancel"): _INFERENCE_ALL,
    ("GET", "/inference/generate-s3-presigned-url-for-uploading"): _INFERENCE_ALL,  # a job's input images
    ("GET", "/inference/get-inference-job"): _INFERENCE_LIST,
    ("GET", "/inference/get-inference-job-image-output"): _INFERENCE_LIST,
    ("GET", "/inference/get-inference-job-param-output"): _INFERENCE_LIST,
    ("GET", "/inference/list-inference-jobs"): _INFERENCE_LIST,
    # datasets, training bases and training jobs
    ("POST", "/dataset"): _TRAIN_ALL,
    ("PUT", "/dataset"): _TRAIN_ALL,
    ("GET", "/datasets"): _TRAIN_LIST,
    ("DELETE", "/dataset/{dataset_name}"): _TRAIN_ALL,
    ("GET", "/dataset/{dataset_name}/data"): _TRAIN_LIST,
    ("GET", "/{dataset_name}/data"): _TRAIN_LIST,
    ("POST", "/model"): _TRAIN_ALL,
    ("PUT", "/model"): _TRAIN_ALL,
    ("GET", "/models"): _TRAIN_LIST,
    ("POST", "/train"): _TRAIN_ALL,
    ("PUT", "/train"): _TRAIN_ALL,
    ("GET", "/trains"): _TRAIN_LIST,
    ("GET", "/train/{train_job_id}"): _TRAIN_LIST,
    # users, their keys, roles, the audit trail
    ("POST", "/users"): _USER_ALL,
    ("GET", "/users"): _USER_LIST,
    ("PUT", "/users/{username}"): _USER_ALL,
    ("DELETE", "/users/{username}"): _USER_ALL,
    ("POST", "/users/{username}/keys"): _USER_ALL,
    ("GET", "/users/{username}/keys"): _USER_LIST,
    ("DELETE", "/users/{username}/keys/{key_id}"): _USER_ALL,
    ("POST", "/roles"): _ROLE_ALL,
    ("GET", "/roles"): _ROLE_LIST,
    ("DELETE", "/roles/{role_name}"): _ROLE_ALL,
    ("GET", "/audit"): _USER_ALL,  # administrators only
}


class RouteNotListed(LookupError):
    """A route without an entry: refused (never open by omission)."""


def permission_for(method: str, route_path: str) -> Permission | None:
    """The permission `method route_path` needs (None: any valid key); RouteNotListed if it has no entry."""
    try:
        return ROUTE_PERMISSIONS[(method, route_path)]
    except KeyError:
        raise RouteNotListed(f"{method} {route_path}") from None
