"""One data dir across three runs of `sd-aws serve`: records, files, uploads and imports survive."""

from __future__ import annotations

import hashlib
import signal
import stat
import time

import requests

from aws_extension.client import MiddlewareClient
from tests.helpers import FileServer, SdAwsProcess, free_port
from tests.middleware.conftest import fake_lora, safetensors_bytes

MiB = 1024 * 1024
LORA = safetensors_bytes({"lora_unet_y.lora_down.weight": ("F32", [64, 64]), "lora_unet_y.alpha": ("F32", [1])}, 5)


def _serve(data_dir, log, env=None) -> SdAwsProcess:
    port = free_port()
    return SdAwsProcess(["serve", "--port", str(port), "--data-dir", str(data_dir)], port,
                        env={"SD_AWS_API_KEY": "", **(env or {})}, log_path=log).start()


def test_records_files_uploads_and_imports_survive_restarts(tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"

    # Run 1: the key is generated, printed once and kept with mode 0600; private addresses are refused.
    run1 = _serve(data_dir, log)
    key_file = data_dir / "api_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert f"API key (shown once; kept in {key_file}): {key}" in log.read_text()
    client = MiddlewareClient(run1.url, key)
    lora = client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / "keep.safetensors", 6 * MiB)],
                                          part_size=5 * MiB)
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG keep me")
    client.create_dataset_from_files("kept", [image])
    pending = client.create_checkpoint("Lora", [("later.safetensors", 1)])
    later = fake_lora(tmp_path / "later.safetensors").read_bytes()
    etag = requests.put(pending["s3PresignUrl"]["later.safetensors"][0], data=later, timeout=10).headers["ETag"]
    with FileServer({"/m.safetensors": (200, {}, LORA)}) as private:
        refused = requests.post(f"{run1.url}/upload_checkpoint", headers={"x-api-key": key}, timeout=10,
                                json={"checkpointType": "Lora", "modelUrl": [private.url + "/m.safetensors"]})
        assert refused.status_code == 400 and "private, loopback or link-local" in refused.json()["error"]
        assert private.hits == {}
    before = client.list_checkpoints()
    assert run1.stop() == 0  # SIGTERM: a clean shutdown

    # Run 2: everything is back; the pending upload completes; an import is cut short by a crash.
    run2 = _serve(data_dir, log, {"SD_AWS_IMPORT_ALLOW_PRIVATE_ADDRESSES": "1"})
    client = MiddlewareClient(run2.url, key)
    assert client.list_checkpoints() == before
    assert client.list_datasets()[0]["status"] == "Enabled"
    assert requests.get(client.dataset_files("kept")[0]["preview_url"], timeout=10).content == image.read_bytes()
    done = client.complete_checkpoint(pending["checkpoint"]["id"],
                                      {"later.safetensors": [{"ETag": etag, "PartNumber": 1}]})
    assert done["checkpoint"]["sha256"] == hashlib.sha256(later).hexdigest()
    assert log.read_text().count("shown once") == 1

    def slow(_hit):
        return 200, {"Content-Length": str(len(LORA))}, (LORA[i:i + 1024] for i in range(0, len(LORA), 1024)
                                                         if not time.sleep(0.2))

    with FileServer({"/slow.safetensors": slow}) as files:
        record = client.import_checkpoint("Lora", [files.url + "/slow.safetensors"])["checkpoint"]
        time.sleep(1.0)
        run2.stop(signal.SIGKILL)

        # Run 3: the interrupted import resumes by itself and completes.
        run3 = _serve(data_dir, log, {"SD_AWS_IMPORT_ALLOW_PRIVATE_ADDRESSES": "1", "SD_AWS_MULTIPART_TTL_S": "2",
                                      "SD_AWS_SWEEP_INTERVAL_S": "0.5", "SD_AWS_IMPORT_MAX_BYTES": "100000"})
        client = MiddlewareClient(run3.url, key)
        final = client.wait_for_checkpoint(record["id"], timeout_s=60, poll_s=0.2)
        assert final["status"] == "Active" and final["sha256"] == hashlib.sha256(LORA).hexdigest()
        assert files.hits["/slow.safetensors"] == 2
    assert next(c for c in client.list_checkpoints() if c["id"] == lora["id"])["status"] == "Active"
    assert not list((data_dir / "blobs").rglob(".*.tmp")), "a partial file was left behind"

    # The import cap holds for a body without Content-Length too.
    endless = {"/endless.safetensors": (200, {}, (b"\x00" * 65536 for _ in range(4)))}
    with FileServer(endless) as files:
        capped = client.import_checkpoint("Lora", [files.url + "/endless.safetensors"])["checkpoint"]
        assert "over the import limit" in client.wait_for_checkpoint(capped["id"], 60, 0.2)["error"]

    # An upload never completed is failed after the TTL and its parts are removed.
    stale = client.create_checkpoint("Lora", [("stale.safetensors", 1)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        entry = next(c for c in client.list_checkpoints() if c["id"] == stale["checkpoint"]["id"])
        if entry["status"] == "Failed":
            break
        time.sleep(0.3)
    assert entry["status"] == "Failed" and "not completed in time" in entry["error"]
    late = requests.put(stale["s3PresignUrl"]["stale.safetensors"][0], data=b"late", timeout=10)
    assert late.status_code == 404
    assert run3.stop() == 0
