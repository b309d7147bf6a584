"""Inspection throughput: profiling a stored JSON Lines file against reading the same bytes, in one run.

Setup: an embedded SeaweedFS under a temporary data dir; a JSON Lines file of ``--mib`` MiB (records of mixed
English and Chinese text, some with e-mail addresses, phone numbers and repeats) is stored in it.

Measured one after the other, in this process (one worker):

(a) read: the object streamed from the store through the same ranged reader the profiler uses, bytes discarded;
(b) profile: ``catalog.inspection.profiler.profile`` of the same object (every record parsed, hashed, scanned for
    personal data; tokens, languages and near-duplicates as the profile job does them);
(c) sample: 4,000 records drawn with a seed across the file (``catalog.inspection.sampling.draw``), streaming the
    file up to the last pick, then again through the profile's index of record offsets (ranged reads of the regions
    holding the picks; the same records).

Prints MiB/s of (a) and (b), their ratio (target: at least 0.25), the peak RSS of the process, and the
seconds (c) took. The data dir is removed and SeaweedFS stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's code

from app.embedded import start_seaweedfs
from app.objectstore import ObjectStore
from app.settings import Settings
from catalog.inspection import profiler, sampling
from catalog.inspection.tasks import range_reader

MIB = 1024 * 1024
TEXTS = (
    "The central bank raised interest rates again this quarter, which surprised many market analysts.",
    "中央银行本季度再次提高利率，这让许多市场分析师感到非常意外。",  # noqa: RUF001
    "Quarterly revenue grew by eight percent while operating costs stayed flat across all regions.",
)


def write_corpus(path: Path, size: int) -> int:
    rng = random.Random(1)
    records = 0
    with path.open("wb") as out:
        while out.tell() < size:
            text = f"{rng.choice(TEXTS)} #{records}"
            if records % 10 == 0:
                text += f" contact writer{records}@example.org or 138{records % 10**8:08d}"
            line = json.dumps({"id": records, "text": text, "score": rng.random()}, ensure_ascii=False)
            out.write(line.encode() + b"\n")
            if records % 50 == 0:  # an exact repeat
                out.write(line.encode() + b"\n")
                records += 1
            records += 1
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=64, help="size of the JSON Lines file")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="corpora-inspection-bench-"))
    access, secret = "bench", secrets.token_hex(16)
    seaweed = start_seaweedfs(data_dir / "s3", access, secret)
    try:
        settings = Settings(
            s3_endpoint=seaweed.endpoint,
            s3_access_key=access,
            s3_secret_key=secret,
            s3_bucket="bench",
            data_dir=data_dir,
        )
        store = ObjectStore(settings)
        if not store.client.bucket_exists(store.bucket):
            store.client.make_bucket(store.bucket)
        corpus = data_dir / "corpus.jsonl"
        records = write_corpus(corpus, args.mib * MIB)
        size = corpus.stat().st_size
        store.client.fput_object(store.bucket, "corpus.jsonl", str(corpus))
        corpus.unlink()
        profiler.warm_up()  # loaded once per worker process, not per file

        started = time.perf_counter()
        reader = range_reader(store, "corpus.jsonl", size)
        while reader.read(8 * MIB):
            pass
        read_seconds = time.perf_counter() - started

        started = time.perf_counter()
        result = profiler.profile(range_reader(store, "corpus.jsonl", size), "corpus.jsonl", size)
        profile_seconds = time.perf_counter() - started
        assert result.records == records, (result.records, records)

        def open_file(_: sampling.SourceFile) -> IO[bytes]:
            return range_reader(store, "corpus.jsonl", size)

        streamed = sampling.SourceFile("corpus.jsonl", "-", result.records)
        started = time.perf_counter()
        drawn = sampling.draw([streamed], 4000, 7, open_file)
        sample_seconds = time.perf_counter() - started
        indexed = sampling.SourceFile("corpus.jsonl", "-", result.records, tuple(result.record_offsets))
        started = time.perf_counter()
        assert sampling.draw([indexed], 4000, 7, open_file) == drawn
        indexed_seconds = time.perf_counter() - started

        read_rate = size / MIB / read_seconds
        profile_rate = size / MIB / profile_seconds
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"file: {size / MIB:.1f} MiB of JSON Lines, {records} records")
        print(f"read from the object store: {read_rate:8.1f} MiB/s")
        print(f"profile (one worker):       {profile_rate:8.1f} MiB/s")
        print(f"ratio profile / read:       {profile_rate / read_rate:8.3f}  (target >= 0.25)")
        print(f"peak RSS:                   {peak_rss:8.0f} MiB")
        print(
            f"sample of 4,000 records:    {sample_seconds:8.2f} s  ({size / MIB / sample_seconds:.1f} MiB/s streamed)"
        )
        print(
            f"the same, by the index:     {indexed_seconds:8.2f} s  "
            f"({len(result.record_offsets)} offsets, ranged reads of the regions holding the records)"
        )
    finally:
        seaweed.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
