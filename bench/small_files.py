"""Sidecar import: N files of 8 KiB, each written and closed through a mount, then `sync`.

Prints files/s (until sync returned) and, on S3, the object PUTs the bucket
received. Runs the code under --code (a checkout) so that two versions can be
compared on one machine:

    python bench/small_files.py --store s3 --n 2000
    python bench/small_files.py --store local --n 2000 --code /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", choices=("s3", "local"), default="s3")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--code", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="encfs-small-")
    env = dict(os.environ, PYTHONPATH=args.code, ENCFS_PHOTO_FAST_KDF="1", XDG_STATE_HOME=f"{base}/state",
               ENCFS_PHOTO_RUNTIME_DIR=f"{base}/run", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", NO_PROXY="127.0.0.1")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    with open(f"{base}/pw", "w") as f:
        f.write("bench passphrase\n")
    cli = [sys.executable, "-m", "encfs_photo.cli"]
    extra: list[str] = []
    puts: list[str] = []
    if args.store == "s3":
        import boto3
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            if environ["REQUEST_METHOD"] == "PUT" and environ.get("PATH_INFO", "").strip("/").count("/") >= 1:
                puts.append(environ["PATH_INFO"])
            return app(environ, start_response)

        server = make_server("127.0.0.1", 0, counting, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        store = "s3://bench/vault"
        extra = ["--endpoint-url", endpoint]
    else:
        store = f"{base}/store"
    subprocess.run(cli + ["init", store, "--password-file", f"{base}/pw", "--no-recovery-key", *extra],
                   env=env, check=True, capture_output=True, cwd=base)
    mnt = f"{base}/mnt"
    os.mkdir(mnt)
    mount_extra = ["--cache-dir", f"{base}/cache"] if args.store == "s3" else []
    proc = subprocess.Popen(cli + ["mount", store, mnt, "--foreground", "--password-file", f"{base}/pw", *extra,
                                   *mount_extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base)
    try:
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                sys.exit("mount failed")
            time.sleep(0.05)
        data = [random.Random(i).randbytes(8192) for i in range(args.n)]
        first = len(puts)
        t0 = time.monotonic()
        os.mkdir(f"{mnt}/xmp")
        for i in range(args.n):
            with open(f"{mnt}/xmp/IMG_{i:05d}.xmp", "wb") as f:
                f.write(data[i])
        t_closed = time.monotonic() - t0
        subprocess.run(cli + ["sync", mnt], env=env, check=True, capture_output=True, cwd=base)
        t_synced = time.monotonic() - t0
        n_data = sum("/data/" in p for p in puts[first:])
        n_journal = sum("/journal/" in p for p in puts[first:])
        print(f"{args.store}: {args.n} files: closed at {args.n / t_closed:.0f} files/s, "
              f"synced at {args.n / t_synced:.0f} files/s, PUTs: data {n_data}, journal {n_journal}")
    finally:
        subprocess.run(cli + ["unmount", mnt], env=env, capture_output=True, cwd=base)
        proc.wait(timeout=120)


if __name__ == "__main__":
    main()
