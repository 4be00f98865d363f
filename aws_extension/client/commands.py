"""The client subcommands of `sd-aws` (checkpoint, dataset, endpoint, txt2img, job, train, user, role), on top of
MiddlewareClient."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tqdm import tqdm

from aws_extension.client.api import ApiError, MiddlewareClient, default_api_key
from aws_extension.settings import ClientSettings, load
from aws_extension.vocabulary import (
    USER_ROLE,
    CheckpointStatus,
    CheckpointType,
    EndpointStatus,
    JobStatus,
    Task,
    TrainingModelStatus,
    TrainingStatus,
    model_stem,
    without_hash_suffix,
)


def client_from_args(args: argparse.Namespace) -> MiddlewareClient:
    settings = load(ClientSettings, api_url=args.api_url, api_key=args.api_key)
    return MiddlewareClient(settings.api_url, settings.api_key or default_api_key(args.data_dir), settings.timeout_s)


def _bytes_bar(description: str, total: int) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description, file=sys.stderr)


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def checkpoint_upload(client: MiddlewareClient, args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in args.files)
    with _bytes_bar("upload", total) as bar:
        record = client.upload_checkpoint_files(
            args.checkpoint_type, args.files, {"message": args.message} if args.message else {},
            progress=lambda done, _total: bar.update(done - bar.n))
    print(f"{record['id']}  {record['status']}  sha256 {record['sha256']}")
    return 0


def checkpoint_import(client: MiddlewareClient, args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("hf_token", args.hf_token), ("civitai_token", args.civitai_token)) if v}
    record = client.import_checkpoint(args.checkpoint_type, args.urls, params)["checkpoint"]
    print(f"import started: checkpoint {record['id']}", file=sys.stderr)
    if args.no_wait:
        print(record["id"])
        return 0
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="download", file=sys.stderr) as bar:
        def show(current: dict) -> None:
            progress = current.get("progress") or {}
            bar.total = progress.get("bytes_total") or bar.total
            bar.set_postfix(files=f"{progress.get('files_done', 0)}/{progress.get('files_total', '?')}")
            bar.update(max(0, (progress.get("bytes_received") or 0) - bar.n))
        final = client.wait_for_checkpoint(record["id"], on_update=show)
    if final["status"] != CheckpointStatus.ACTIVE:
        print(f"error: import failed: {final.get('error')}", file=sys.stderr)
        return 1
    print(f"{final['id']}  {final['status']}  {', '.join(final['name'])}  sha256 {final['sha256']}")
    return 0


def checkpoint_list(client: MiddlewareClient, args: argparse.Namespace) -> int:
    records = client.list_checkpoints([args.checkpoint_type] if args.checkpoint_type else None,
                                      [args.status] if args.status else None)
    _print_table([[r["id"], r["type"], r["status"], ", ".join(r["name"]), r.get("size") or "",
                   (r.get("sha256") or "")[:10]] for r in records],
                 ["id", "type", "status", "files", "size", "sha256"])
    return 0


def dataset_create(client: MiddlewareClient, args: argparse.Namespace) -> int:
    total = sum(p.stat().st_size for p in args.files)
    with _bytes_bar("upload", total) as bar:
        result = client.create_dataset_from_files(args.name, args.files, args.description,
                                                  progress=lambda done, _t: bar.update(done - bar.n))
    print(f"{result['datasetName']}  {result['status']}")
    return 0


def endpoint_deploy(client: MiddlewareClient, args: argparse.Namespace) -> int:
    job = client.deploy_endpoint(args.instance_type, args.count, args.endpoint_name, args.autoscaling,
                                 args.min_instances, args.max_instances)
    print(f"deploying {job['endpoint_name']} (job {job['EndpointDeploymentJobId']})", file=sys.stderr)
    if args.no_wait:
        print(job["endpoint_name"])
        return 0
    record = client.wait_for_endpoint(job["EndpointDeploymentJobId"])
    if record["endpoint_status"] != EndpointStatus.IN_SERVICE:
        print(f"error: {record['endpoint_name']} is {record['endpoint_status']}: {record['error']}", file=sys.stderr)
        return 1
    print(f"{record['endpoint_name']}  InService  instances {record['current_instance_count']}")
    return 0


def endpoint_list(client: MiddlewareClient, args: argparse.Namespace) -> int:
    _print_table([[e["endpoint_name"], e["endpoint_status"], e["instance_type"], e["current_instance_count"],
                   "yes" if e["autoscaling"] else "no", e["startTime"]] for e in client.list_endpoints()],
                 ["name", "status", "instance type", "instances", "autoscaling", "started"])
    return 0


def endpoint_delete(client: MiddlewareClient, args: argparse.Namespace) -> int:
    results = client.delete_endpoints(args.names)["results"]
    for name, result in results.items():
        print(f"{name}: {result}")
    return 0 if all(r == "deleted" for r in results.values()) else 1


def txt2img(client: MiddlewareClient, args: argparse.Namespace) -> int:
    model = args.model
    if not model:
        active = client.list_checkpoints([CheckpointType.STABLE_DIFFUSION], [CheckpointStatus.ACTIVE])
        if not active:
            print("error: no Active Stable-diffusion checkpoint; upload one with "
                  "`sd-aws checkpoint upload FILE --type Stable-diffusion`", file=sys.stderr)
            return 1
        model = active[0]["name"][0]
    body = {"task_type": Task.TXT2IMG.value, "models": {CheckpointType.STABLE_DIFFUSION.value: [model]},
            "prompt": args.prompt,
            "negative_prompt": args.negative_prompt, "width": args.width, "height": args.height,
            "steps": args.steps, "seed": args.seed, "sampler_name": args.sampler, "batch_size": args.batch_size}
    if args.endpoint:
        body["sagemaker_endpoint_name"] = args.endpoint
    job = client.create_inference(body)
    print(f"job {job['inference_id']} on {job['endpoint_name']}", file=sys.stderr)
    with tqdm(total=100, unit="%", desc="generate", file=sys.stderr) as bar:
        def show(current: dict) -> None:
            bar.set_postfix_str(f"queued #{current['queue_position']}" if current.get("queue_position") is not None
                                else current["status"])
            bar.update(max(0, round(100 * (current.get("progress") or 0)) - bar.n))
        try:
            final = client.wait_for_job(job["inference_id"], on_update=show)
        except KeyboardInterrupt:
            client.cancel_inference(job["inference_id"])
            print("\ncancelled", file=sys.stderr)
            return 130
    if final["status"] != JobStatus.SUCCEED:
        print(f"error: job {final['status']}: {final['error']}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for index, url in enumerate(client.inference_image_urls(job["inference_id"])):
        path = args.out / f"{job['inference_id']}-{index}.png"
        path.write_bytes(client.download(url))
        print(path)
    return 0


def job_list(client: MiddlewareClient, args: argparse.Namespace) -> int:
    jobs = client.list_inference_jobs(status=args.status, limit=args.limit)
    _print_table([[j["InferenceJobId"], j["taskType"], j["status"], f"{round(100 * (j['progress'] or 0))}%",
                   j["endpoint_name"], j["startTime"]] for j in jobs],
                 ["id", "task", "status", "progress", "endpoint", "started"])
    return 0


def job_show(client: MiddlewareClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.inference_job(args.job_id), indent=2))
    return 0


def job_cancel(client: MiddlewareClient, args: argparse.Namespace) -> int:
    job = client.cancel_inference(args.job_id)
    print(f"{job['InferenceJobId']}  {job['status']}")
    return 0


def _time(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) if timestamp else ""


def _listed(values: list[str]) -> list[str]:
    """`--role a --role b` and `--role a,b` alike."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def user_create(client: MiddlewareClient, args: argparse.Namespace) -> int:
    created = client.create_user(args.username, _listed(args.roles) or [USER_ROLE], args.expires_in_days,
                                 args.expires_at)
    print(f"user {created['username']} (roles {', '.join(created['roles'])}); key {created['key_id']}"
          f"{' expires ' + _time(created['expires']) + ' UTC' if created['expires'] else ''}. "
          "The key is shown this once:", file=sys.stderr)
    print(created["api_key"])
    return 0


def user_list(client: MiddlewareClient, args: argparse.Namespace) -> int:
    users, last_key = [], None
    while True:
        page = client.list_users(last_key=last_key)
        users += page["users"]
        last_key = page.get("last_key")
        if not last_key:
            break
    _print_table([[u["username"], ", ".join(u["roles"]), _time(u["created"]), u["creator"]] for u in users],
                 ["username", "roles", "created (UTC)", "creator"])
    return 0


def user_delete(client: MiddlewareClient, args: argparse.Namespace) -> int:
    user = client.delete_user(args.username)
    print(f"{user['username']} deleted: its keys stopped working; its name stays reserved")
    return 0


def user_key_create(client: MiddlewareClient, args: argparse.Namespace) -> int:
    created = client.create_key(args.username, args.expires_in_days, args.expires_at)
    print(f"key {created['key_id']} for {created['username']}"
          f"{' expires ' + _time(created['expires']) + ' UTC' if created['expires'] else ''}. "
          "The key is shown this once:", file=sys.stderr)
    print(created["api_key"])
    return 0


def user_key_list(client: MiddlewareClient, args: argparse.Namespace) -> int:
    _print_table([[k["key_id"], k["status"], _time(k["created"]), _time(k["expires"]) or "never"]
                  for k in client.list_keys(args.username)], ["key id", "status", "created (UTC)", "expires"])
    return 0


def user_key_revoke(client: MiddlewareClient, args: argparse.Namespace) -> int:
    key = client.revoke_key(args.username, args.key_id)
    print(f"{key['key_id']}  {key['status']}")
    return 0


def role_create(client: MiddlewareClient, args: argparse.Namespace) -> int:
    role = client.create_role(args.role_name, _listed(args.permissions), args.max_queued_jobs,
                              args.max_concurrent_trainings)
    print(f"{role['role_name']}  {', '.join(role['permissions'])}")
    return 0


def role_list(client: MiddlewareClient, args: argparse.Namespace) -> int:
    def limit(value: int | None) -> str:
        return "-" if value is None else str(value)

    _print_table([[r["role_name"], ", ".join(r["permissions"]), limit(r["max_queued_jobs"]),
                   limit(r["max_concurrent_trainings"]), "yes" if r["built_in"] else ""] for r in client.list_roles()],
                 ["role", "permissions", "max queued jobs", "max trainings", "built in"])
    return 0


def role_delete(client: MiddlewareClient, args: argparse.Namespace) -> int:
    print(f"{client.delete_role(args.role_name)['role_name']} deleted")
    return 0


def _training_base(client: MiddlewareClient, base: str) -> dict:
    """The Complete training model of the Active Stable-diffusion checkpoint `base` (a file name, its stem or
    the checkpoint's id): one made from it before (without extract_ema), else one made now through /model."""
    wanted = without_hash_suffix(base)
    active = client.list_checkpoints([CheckpointType.STABLE_DIFFUSION], [CheckpointStatus.ACTIVE])
    checkpoint = next((c for c in active if wanted == c["id"] or wanted in c["name"]
                       or wanted in [model_stem(n) for n in c["name"]]), None)
    if checkpoint is None:
        raise ApiError(0, f"No Active Stable-diffusion checkpoint is named {base!r}: see `sd-aws checkpoint list "
                          "--type Stable-diffusion`, or upload one with `sd-aws checkpoint upload FILE --type "
                          "Stable-diffusion`.")
    for model in client.list_training_models([TrainingModelStatus.COMPLETE]):
        if model["checkpoint_id"] == checkpoint["id"] \
                and not (model["params"].get("create_model_params") or {}).get("extract_ema"):
            return model
    stem = "".join(c if c.isalnum() else "-" for c in model_stem(checkpoint["name"][0])).strip("-")[:56]
    model = client.create_training_model(checkpoint["id"], f"{stem or 'model'}-base")
    print(f"preparing the training base {model['id']} from {checkpoint['name'][0]}", file=sys.stderr)
    client.prepare_training_model(model["id"])
    return client.wait_for_training_model(model["id"])


def _follow_training(client: MiddlewareClient, job: dict) -> int:
    """A progress bar (step/total, loss, ETA) until the job ends; Ctrl-C stops it (Stopped: resumable)."""
    job_id = job["id"]
    with tqdm(total=job["total_steps"] or None, unit="step", desc="train", file=sys.stderr) as bar:
        def show(current: dict) -> None:
            bar.total = current["total_steps"] or bar.total
            if current.get("queue_position") is not None:
                bar.set_postfix_str(f"queued #{current['queue_position'] + 1}")
            elif current.get("loss") is not None:
                eta = f", eta {current['eta_s']:.0f} s" if current.get("eta_s") is not None else ""
                bar.set_postfix_str(f"loss {current['loss']:.4f}{eta}")
            else:
                bar.set_postfix_str(current["status"])
            bar.update(max(0, current["step"] - bar.n))
        try:
            final = client.wait_for_training(job_id, poll_s=1.0, on_update=show)
        except KeyboardInterrupt:
            bar.close()
            stopped = client.stop_training(job_id)
            print(f"stopped: {job_id} is {stopped['status']} at step {stopped['step']} of {stopped['total_steps']}, "
                  f"its state saved; resume it with `sd-aws train resume {job_id} --wait`", file=sys.stderr)
            return 130
    if final["status"] == TrainingStatus.FAIL:
        print(f"error: training {job_id} failed at step {final['step']}: {final['error']}", file=sys.stderr)
        return 1
    if final["status"] != TrainingStatus.COMPLETE:
        print(f"training {job_id} is {final['status']} at step {final['step']} of {final['total_steps']}; resume it "
              f"with `sd-aws train resume {job_id} --wait`", file=sys.stderr)
        return 1
    checkpoint = client.get_checkpoint(final["checkpoint_id"])
    filename = checkpoint["name"][0]
    print(f"{job_id}  Complete  {checkpoint['type']} {filename}  (checkpoint {checkpoint['id']})")
    if checkpoint["type"] == CheckpointType.LORA:
        print(f"use it in a prompt: <lora:{model_stem(filename)}:1>")
    else:
        print(f"use it as the model: sd-aws txt2img PROMPT --model {filename}")
    return 0


def train_start(client: MiddlewareClient, args: argparse.Namespace) -> int:
    """`sd-aws train lora|dreambooth`: the base (made or reused), the job, started; followed with --wait."""
    lora = args.action == "lora"
    model = _training_base(client, args.base)
    concept: dict = {"instance_prompt": args.instance_prompt}
    if args.class_prompt:
        concept |= {"class_prompt": args.class_prompt, "num_class_images_per": args.class_images_per}
    config: dict = {"concepts_list": [concept], "model_name": args.name or f"{args.dataset}-{args.action}"}
    for field, value in (("max_train_steps", args.steps), ("lora_unet_rank", getattr(args, "rank", None)),
                         ("resolution", args.resolution), ("seed", args.seed),
                         ("lora_learning_rate" if lora else "learning_rate", args.learning_rate)):
        if value is not None:
            config[field] = value
    training = {"dataset_name": args.dataset, "training_instance_type": args.instance_type}
    if args.class_dataset:
        training["class_dataset_name"] = args.class_dataset
    train_type = CheckpointType.LORA if lora else CheckpointType.STABLE_DIFFUSION
    job = client.start_training(client.create_training(train_type.value, model["id"], training, config)["id"])
    print(f"training {job['id']}: {job['trainType']} {job['modelName']}, {job['total_steps']} steps on "
          f"{job['instance_type']}", file=sys.stderr)
    if not args.wait:
        print(job["id"])
        print(f"follow it with `sd-aws train show {job['id']}`", file=sys.stderr)
        return 0
    return _follow_training(client, job)


def train_resume(client: MiddlewareClient, args: argparse.Namespace) -> int:
    job = client.start_training(args.job_id)
    print(f"training {job['id']} resumed from its saved state ({job['status']})", file=sys.stderr)
    return _follow_training(client, job) if args.wait else 0


def train_stop(client: MiddlewareClient, args: argparse.Namespace) -> int:
    job = client.stop_training(args.job_id)
    print(f"{job['id']}  {job['status']}  step {job['step']} of {job['total_steps']}")
    return 0


def train_list(client: MiddlewareClient, args: argparse.Namespace) -> int:
    jobs = [client.training_job(j["id"]) if j["status"] == TrainingStatus.TRAINING else j  # the live step
            for j in client.list_trainings([args.status] if args.status else None)]
    _print_table([[j["id"], j["trainType"], j["status"], f"{j['step']}/{j['total_steps']}",
                   f"{j['loss']:.4f}" if j.get("loss") is not None else "", j["modelName"], j["dataset_name"],
                   j["instance_type"]] for j in jobs],
                 ["id", "type", "status", "step", "loss", "model", "dataset", "instance type"])
    return 0


def train_show(client: MiddlewareClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.training_job(args.job_id), indent=2))
    return 0


COMMANDS = {("checkpoint", "upload"): checkpoint_upload, ("checkpoint", "import"): checkpoint_import,
            ("checkpoint", "list"): checkpoint_list, ("dataset", "create"): dataset_create,
            ("endpoint", "deploy"): endpoint_deploy, ("endpoint", "list"): endpoint_list,
            ("endpoint", "delete"): endpoint_delete, ("txt2img", None): txt2img, ("job", "list"): job_list,
            ("job", "show"): job_show, ("job", "cancel"): job_cancel, ("train", "lora"): train_start,
            ("train", "dreambooth"): train_start, ("train", "resume"): train_resume, ("train", "stop"): train_stop,
            ("train", "list"): train_list, ("train", "show"): train_show,
            ("user", "create"): user_create, ("user", "list"): user_list, ("user", "delete"): user_delete,
            ("user", "key-create"): user_key_create, ("user", "key-list"): user_key_list,
            ("user", "key-revoke"): user_key_revoke, ("role", "create"): role_create, ("role", "list"): role_list,
            ("role", "delete"): role_delete}


def run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[(args.command, getattr(args, "action", None))](client_from_args(args), args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
