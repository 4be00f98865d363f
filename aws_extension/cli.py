"""The `sd-aws` command (also `python -m aws_extension`).

Each subcommand parses its flags here and calls one function of the part it belongs to; heavy modules
are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aws_extension import __version__
from aws_extension.vocabulary import MODEL_TYPES


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to bind (default 127.0.0.1, env SD_AWS_HOST)")
    p.add_argument("--port", type=int, help="port to bind (default 8080, env SD_AWS_PORT)")
    p.add_argument("--data-dir", type=Path, help="data folder (default ~/.sd-aws, env SD_AWS_HOME)")


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-url", help="middleware URL (env SD_AWS_API_URL, default http://127.0.0.1:8080)")
    p.add_argument("--api-key", help="API key (env SD_AWS_API_KEY, else the key of the local data dir)")
    p.add_argument("--data-dir", type=Path, help="local data dir to read the API key from (env SD_AWS_HOME)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-aws", description="Stable Diffusion on cloud GPUs.")
    parser.add_argument("--version", action="version", version=f"sd-aws {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="the whole stack here: middleware, tiny model, a local endpoint")
    _add_server_flags(p)
    p.add_argument("--demo", action="store_true", help="also run one txt2img job, write the PNG, then stop")

    p = sub.add_parser("serve", help="run the middleware API")
    _add_server_flags(p)
    p.add_argument("--backend", choices=("local", "aws"),
                   help="local (SQLite, a folder, worker processes) or aws (the resources of SD_AWS_STACK_NAME "
                        "through boto3's configuration); default local, env SD_AWS_BACKEND")

    p = sub.add_parser("worker", help="run a worker (SageMaker container contract + /sdapi/v1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--models-dir", type=Path, required=True, help="folder laid out like the WebUI's models/")
    p.add_argument("--engine", choices=("diffusers", "webui"), default="diffusers")
    p.add_argument("--webui-url", help="URL of the A1111 WebUI to forward to (with --engine webui)")
    p.add_argument("--webui-models-dir", type=Path,
                   help="with --engine webui: the WebUI's models/ folder, for a WebUI that does not answer "
                        "/sdapi/v1/cmd-flags (A1111 does: its own folders are used)")

    sm = sub.add_parser("sagemaker", help="SageMaker's container entry points").add_subparsers(dest="action", required=True)
    p = sm.add_parser("serve", help="the inference container: /ping and /invocations on port 8080 (SAGEMAKER_BIND_TO_PORT)")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (SageMaker needs every interface)")  # noqa: S104
    p.add_argument("--port", type=int, help="port to bind (default: SAGEMAKER_BIND_TO_PORT, else 8080)")
    p.add_argument("--engine", choices=("diffusers", "webui"), default="diffusers")
    p.add_argument("--webui-url", help="URL of the A1111 WebUI to forward to (with --engine webui)")
    p.add_argument("--webui-models-dir", type=Path, help="the WebUI's models/ folder (with --engine webui)")
    p.add_argument("--webui-command", help="start the WebUI with this command first, and stop with it (with --engine webui)")
    sm.add_parser("train", help="the training container: hyperparameters and channels under SD_AWS_SAGEMAKER_ROOT")

    from aws_extension.aws_cli import add_parser as add_aws_parser

    add_aws_parser(sub)

    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight SD 1.x checkpoint for tests and demos")
    p.add_argument("out", type=Path, help="output .safetensors file")
    p.add_argument("--extras", type=Path, help="also write a matching LoRA, embedding, VAE and ControlNet here")
    p.add_argument("--learnable", action="store_true",
                   help="the tiny model that can show learning (a colour-exact VAE, a prompt that matters)")

    p = sub.add_parser("ui", help="serve the gradio tabs standalone (no WebUI needed)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--api-url", help="middleware URL (env SD_AWS_API_URL)")
    p.add_argument("--api-key", help="API key (env SD_AWS_API_KEY)")

    ck = sub.add_parser("checkpoint", help="the model catalogue").add_subparsers(dest="action", required=True)
    p = ck.add_parser("upload", help="upload model files (multipart, parallel, with progress)")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--type", required=True, choices=MODEL_TYPES, dest="checkpoint_type")
    p.add_argument("--message", default="", help="a description kept with the checkpoint")
    _add_client_flags(p)
    p = ck.add_parser("import", help="import model files from URLs (downloaded by the middleware)")
    p.add_argument("urls", nargs="+")
    p.add_argument("--type", required=True, choices=MODEL_TYPES, dest="checkpoint_type")
    p.add_argument("--hf-token", help="Hugging Face token (sent to huggingface.co only, never stored)")
    p.add_argument("--civitai-token", help="Civitai token (sent to civitai.com only, never stored)")
    p.add_argument("--no-wait", action="store_true", help="do not follow the download")
    _add_client_flags(p)
    p = ck.add_parser("list", help="list checkpoints")
    p.add_argument("--type", choices=MODEL_TYPES, dest="checkpoint_type")
    p.add_argument("--status")
    _add_client_flags(p)

    ep = sub.add_parser("endpoint", help="inference endpoints").add_subparsers(dest="action", required=True)
    p = ep.add_parser("deploy", help="deploy an endpoint and wait until it is InService")
    p.add_argument("--name", dest="endpoint_name")
    p.add_argument("--instance-type", default="local")
    p.add_argument("--count", type=int, default=1, help="initial instance count")
    p.add_argument("--autoscaling", action="store_true")
    p.add_argument("--min", type=int, dest="min_instances")
    p.add_argument("--max", type=int, dest="max_instances")
    p.add_argument("--no-wait", action="store_true")
    _add_client_flags(p)
    p = ep.add_parser("list", help="list endpoints")
    _add_client_flags(p)
    p = ep.add_parser("delete", help="delete endpoints")
    p.add_argument("names", nargs="+")
    _add_client_flags(p)

    p = sub.add_parser("txt2img", help="generate on an endpoint and save the images")
    p.add_argument("prompt")
    p.add_argument("--endpoint", help="endpoint name (default: the least-loaded InService one)")
    p.add_argument("--model", help="checkpoint file name (default: the newest Active one)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs")
    _add_client_flags(p)

    jb = sub.add_parser("job", help="inference jobs").add_subparsers(dest="action", required=True)
    p = jb.add_parser("list", help="recent jobs")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    _add_client_flags(p)
    p = jb.add_parser("show", help="one job")
    p.add_argument("job_id")
    _add_client_flags(p)
    p = jb.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id")
    _add_client_flags(p)

    ds = sub.add_parser("dataset", help="training datasets").add_subparsers(dest="action", required=True)
    p = ds.add_parser("create", help="create a dataset from image files and enable it")
    p.add_argument("name")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--description", default="")
    _add_client_flags(p)

    us = sub.add_parser("user", help="users and their API keys (needs user:all)").add_subparsers(dest="action",
                                                                                                 required=True)
    p = us.add_parser("create", help="create a user; prints its first API key (shown once)")
    p.add_argument("username")
    p.add_argument("--role", dest="roles", action="append", help="a role (repeat, or a,b); default: user")
    _add_expiry_flags(p)
    _add_client_flags(p)
    p = us.add_parser("list", help="list users")
    _add_client_flags(p)
    p = us.add_parser("delete", help="delete a user: its keys stop at once, its name stays reserved")
    p.add_argument("username")
    _add_client_flags(p)
    p = us.add_parser("key-create", help="a new API key for a user (shown once); rotate, then key-revoke the old")
    p.add_argument("username")
    _add_expiry_flags(p)
    _add_client_flags(p)
    p = us.add_parser("key-list", help="a user's keys: ids, status, expiry (never the keys)")
    p.add_argument("username")
    _add_client_flags(p)
    p = us.add_parser("key-revoke", help="revoke a key: it stops at once")
    p.add_argument("username")
    p.add_argument("key_id")
    _add_client_flags(p)

    ro = sub.add_parser("role", help="roles: named sets of permissions (needs role:all)").add_subparsers(
        dest="action", required=True)
    p = ro.add_parser("create", help="create a role")
    p.add_argument("role_name")
    p.add_argument("--permission", dest="permissions", action="append", required=True,
                   help="a permission such as inference:all or checkpoint:list (repeat, or a,b)")
    p.add_argument("--max-queued-jobs", type=int, help="queued inference jobs per user (default: no limit)")
    p.add_argument("--max-concurrent-trainings", type=int, help="trainings at once per user (default: no limit)")
    _add_client_flags(p)
    p = ro.add_parser("list", help="list roles")
    _add_client_flags(p)
    p = ro.add_parser("delete", help="delete a role no user has")
    p.add_argument("role_name")
    _add_client_flags(p)

    tr = sub.add_parser("train", help="training jobs (LoRA, DreamBooth)").add_subparsers(dest="action", required=True)
    for kind, what in (("lora", "a LoRA"), ("dreambooth", "a full DreamBooth checkpoint")):
        p = tr.add_parser(kind, help=f"train {what} on a dataset and register it as a model")
        p.add_argument("--base", required=True, help="an Active Stable-diffusion checkpoint (file name or id)")
        p.add_argument("--dataset", required=True, help="the dataset of training images (sd-aws dataset create)")
        p.add_argument("--instance-prompt", required=True, help="the images' caption where they have no .txt")
        p.add_argument("--class-prompt", help="prior preservation: the class the images belong to")
        p.add_argument("--class-dataset", help="your own class images (else generated from --class-prompt)")
        p.add_argument("--class-images-per", type=int, default=1,
                       help="class images per training image with --class-prompt (default 1)")
        p.add_argument("--steps", type=int, help="training steps (default: 100 epochs of the dataset)")
        if kind == "lora":
            p.add_argument("--rank", type=int, help="LoRA rank of the UNet (default 4)")
        p.add_argument("--learning-rate", type=float, help="default 1e-4 for a LoRA, 5e-6 for DreamBooth")
        p.add_argument("--resolution", type=int, help="a multiple of 64 (default 512)")
        p.add_argument("--seed", type=int)
        p.add_argument("--name", help="the trained model's name (default: <dataset>-<kind>)")
        p.add_argument("--instance-type", default="local", help="local, or an ml.* GPU type (AWS backend)")
        p.add_argument("--wait", action="store_true", help="follow it with a progress bar until it ends")
        _add_client_flags(p)
    p = tr.add_parser("resume", help="start a Stopped job again from its saved state")
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="follow it with a progress bar until it ends")
    _add_client_flags(p)
    p = tr.add_parser("stop", help="stop a job, keeping its saved state")
    p.add_argument("job_id")
    _add_client_flags(p)
    p = tr.add_parser("list", help="training jobs")
    p.add_argument("--status")
    _add_client_flags(p)
    p = tr.add_parser("show", help="one training job")
    p.add_argument("job_id")
    _add_client_flags(p)
    return parser


def _add_expiry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expires-in-days", type=float, help="the key stops working after this many days")
    p.add_argument("--expires-at", help="or at this ISO 8601 time (UTC if no zone)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        from aws_extension.up import up

        return up(host=args.host, port=args.port, data_dir=args.data_dir, demo=args.demo)
    if args.command == "serve":
        from aws_extension.middleware.server import serve

        return serve(host=args.host, port=args.port, data_dir=args.data_dir, backend=args.backend)
    if args.command == "worker":
        from aws_extension.worker.server import serve as serve_worker

        return serve_worker(host=args.host, port=args.port, models_dir=args.models_dir,
                            engine=args.engine, webui_url=args.webui_url, webui_models_dir=args.webui_models_dir)
    if args.command == "sagemaker" and args.action == "train":
        from aws_extension.worker.sagemaker_train import train_main

        return train_main()
    if args.command == "sagemaker":
        from aws_extension.worker.sagemaker import serve as serve_sagemaker

        return serve_sagemaker(args.host, args.port, args.engine, args.webui_url, args.webui_models_dir,
                               args.webui_command)
    if args.command == "aws":
        from aws_extension.aws_cli import run as run_aws

        return run_aws(args)
    if args.command == "make-tiny-model":
        from aws_extension.engine.tiny import write_tiny_model

        write_tiny_model(args.out, extras_dir=args.extras, learnable=args.learnable)
        return 0
    if args.command == "ui":
        from aws_extension.ui.app import serve as serve_ui

        return serve_ui(host=args.host, port=args.port, api_url=args.api_url, api_key=args.api_key)
    from aws_extension.client import commands

    return commands.run(args)


if __name__ == "__main__":
    sys.exit(main())
