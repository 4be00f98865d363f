"""The client subcommands of `sd-aws` (checkpoint, dataset), on top of MiddlewareClient."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from aws_extension.client.api import ApiError, MiddlewareClient, default_api_key
from aws_extension.settings import ClientSettings, load


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
    if final["status"] != "Active":
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


COMMANDS = {("checkpoint", "upload"): checkpoint_upload, ("checkpoint", "import"): checkpoint_import,
            ("checkpoint", "list"): checkpoint_list, ("dataset", "create"): dataset_create}


def run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[(args.command, args.action)](client_from_args(args), args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
