"""Ingestion throughput: sslpipe's ingest vs a plain single-process webdataset.ShardWriter loop.

Builds a folder of real-looking JPEGs (smooth colour fields with shapes, camera-like sizes), then
times, side by side and alternating, three ways of turning them into shards:

* ``plain+decode``: one process reads each file, decodes it with PIL (the validation any real
  ingestion must do) and writes it with ``webdataset.ShardWriter``; the baseline of the target;
* ``plain copy``: the same loop without decoding, an I/O-only reference;
* ``sslpipe``: ``sslcore.data.ingest.ingest`` with its process pool (decode-once validation,
  dedup, hash splits, deterministic shards, manifest and rejects report).

Prints the median images/s of each and the ratio sslpipe / plain+decode.

    python benchmarks/ingest.py --images 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from sslcore.config import load_config
from sslcore.data.ingest import ingest
from sslcore.resources import available_cpus


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = rng.choice([(320, 240), (256, 256), (240, 320), (384, 256)])
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).copy()
        for _ in range(4):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(8, 40)
            arr[max(0, y - r) : y + r, max(0, x - r) : x + r] = rng.integers(0, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=88)
        path = folder / f"class{i % 10}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())


def plain_loop(src: Path, out: Path, decode: bool) -> int:
    out.mkdir(parents=True)
    files = sorted(src.rglob("*.jpg"))
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=256, verbose=0) as sink:
        for i, path in enumerate(files):
            data = path.read_bytes()
            if decode:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
            sink.write({"__key__": f"{i:09d}", "jpg": data, "cls": path.parent.name[5:]})
    return len(files)


def ours(src: Path, out: Path, workers: int) -> int:
    cfg = load_config(
        None,
        [
            "ingest.source.kind=folder",
            f"ingest.source.path={src}",
            "ingest.source.labels=subfolder",
            f"ingest.workers={workers}",
            "ingest.chunk_size=128",
        ],
    )
    return ingest(cfg.ingest, out).manifest.inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=available_cpus())
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_images(root / "src", args.images)
        size = sum(p.stat().st_size for p in (root / "src").rglob("*.jpg"))
        print(f"generated {args.images} JPEGs ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
        runs: dict[str, list[float]] = {"plain copy": [], "plain+decode": [], "sslpipe": []}
        for r in range(args.repeats):
            for name in runs:  # alternate, so drift on a shared machine hits every variant alike
                out = root / f"out-{r}-{name.replace(' ', '-').replace('+', '-')}"
                start = time.perf_counter()
                if name == "sslpipe":
                    n = ours(root / "src", out, args.workers)
                else:
                    n = plain_loop(root / "src", out, decode=name == "plain+decode")
                runs[name].append(n / (time.perf_counter() - start))
                shutil.rmtree(out)
        print(f"\n{'variant':<14} {'median img/s':>13}   runs")
        for name, rates in runs.items():
            print(f"{name:<14} {statistics.median(rates):>13.0f}   {', '.join(f'{x:.0f}' for x in rates)}")
        ratio = statistics.median(runs["sslpipe"]) / statistics.median(runs["plain+decode"])
        print(f"\nsslpipe / plain+decode = {ratio:.2f}x with {args.workers} worker processes (target >= 1.8x)")


if __name__ == "__main__":
    main()
