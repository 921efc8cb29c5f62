"""Through a real mount on moto's S3: 2000 sidecars, each written and closed, cost few PUTs.

The daemon's write-back delay is set past the length of the import, so that
folding ends only at the caps (PACK_CAP, FOLD_MAX) and at ``sync``: the bound
does not depend on the machine's speed. A second mount with an empty cache
reads the files back from the bucket alone.
"""

from __future__ import annotations

import random

from test_mount_s3 import moto_server, s3env, s3vault  # noqa: F401 - fixtures

N = 2000


def sidecar(i: int) -> bytes:
    return random.Random(i).randbytes(8 * 1024)


def test_2000_sidecars_through_the_mount_cost_few_puts(s3vault, tmp_path):  # noqa: F811
    s3vault.cli.env["ENCFS_PHOTO_WRITE_BACK_DELAY"] = "3600"
    s3vault.mount(tmp_path / "cache")
    first = len(s3vault.server.put_keys)
    d = s3vault.mnt / "xmp"
    d.mkdir()
    for i in range(N):
        with open(d / f"IMG_{i:04d}.xmp", "wb") as f:
            f.write(sidecar(i))
    s3vault.sync()
    keys = s3vault.server.put_keys[first:]
    vault_puts = [k for k in keys if k.startswith(("data/", "journal/"))]
    assert len(vault_puts) <= N // 20, (len(vault_puts), len(keys))
    print(f"mount: {N} sidecars -> {len(vault_puts)} data/journal PUTs ({len(keys)} PUTs in all)")
    s3vault.unmount()
    s3vault.mount(tmp_path / "cache2")  # another device: nothing cached
    try:
        for i in range(0, N, 7):
            assert (d / f"IMG_{i:04d}.xmp").read_bytes() == sidecar(i)
        assert len(list(d.iterdir())) == N
    finally:
        s3vault.unmount()
