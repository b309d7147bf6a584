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

Prints MiB/s of (a) and (b) (medians of ``--rounds`` alternations) and their ratio (target: at least 0.25), the
profile's MiB per CPU-second (what an unloaded core does), the peak RSS of the process, and the seconds (c) took
(target: under 30 s on 5 GiB). ``--sample-only`` skips (a) and (b) and takes the index of record offsets from the
writer, for files too large to profile in a benchmark (``--mib 5120 --sample-only``). The data dir is removed and
SeaweedFS stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import shutil
import statistics
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


def write_corpus(path: Path, size: int) -> tuple[int, list[tuple[int, int]]]:
    """Write the corpus; its record count and the index of record offsets the profiler would record for it."""
    rng = random.Random(1)
    records = 0
    offsets: list[tuple[int, int]] = []
    repeat = b""
    with path.open("wb") as out:
        while (at := out.tell()) < size:
            if not offsets or at >= offsets[-1][1] + profiler.OFFSET_SPACING:
                offsets.append((records, at))
            records += 1
            if repeat:  # an exact repeat of the line before
                out.write(repeat)
                repeat = b""
                continue
            number = records - 1
            text = f"{rng.choice(TEXTS)} #{number}"
            if number % 10 == 0:
                text += f" contact writer{number}@example.org or 138{number % 10**8:08d}"
            line = json.dumps({"id": number, "text": text, "score": rng.random()}, ensure_ascii=False).encode()
            out.write(line + b"\n")
            if number % 50 == 0:
                repeat = line + b"\n"
    return records, offsets


def measure_sampling(
    store: ObjectStore, size: int, records: int, offsets: list[tuple[int, int]]
) -> tuple[float, float]:
    """Seconds to draw 4,000 seeded records streaming the file up to the last pick, and through the index."""

    def open_file(_: sampling.SourceFile) -> IO[bytes]:
        return range_reader(store, "corpus.jsonl", size)

    started = time.perf_counter()
    drawn = sampling.draw([sampling.SourceFile("corpus.jsonl", "-", records)], 4000, 7, open_file)
    streamed = time.perf_counter() - started
    indexed = sampling.SourceFile("corpus.jsonl", "-", records, tuple(offsets))
    started = time.perf_counter()
    assert sampling.draw([indexed], 4000, 7, open_file) == drawn
    return streamed, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=64, help="size of the JSON Lines file")
    parser.add_argument("--rounds", type=int, default=1, help="read and profile alternately this often (medians)")
    parser.add_argument(
        "--sample-only", action="store_true", help="only draw the 4,000-record sample (for files of several GiB)"
    )
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
        records, offsets = write_corpus(corpus, args.mib * MIB)
        size = corpus.stat().st_size
        store.client.fput_object(store.bucket, "corpus.jsonl", str(corpus))
        corpus.unlink()
        print(f"file: {size / MIB:.1f} MiB of JSON Lines, {records} records")
        if not args.sample_only:
            assert profile_file(store, size, records, args.rounds) == offsets  # the index the profile records
        streamed, indexed = measure_sampling(store, size, records, offsets)
        print(f"sample of 4,000 records:    {streamed:8.2f} s  ({size / MIB / streamed:.1f} MiB/s streamed)")
        print(
            f"the same, by the index:     {indexed:8.2f} s  "
            f"({len(offsets)} offsets, ranged reads of the regions holding the records)"
        )
        print(f"peak RSS:                   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")
    finally:
        seaweed.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def profile_file(store: ObjectStore, size: int, records: int, rounds: int) -> list[tuple[int, int]]:
    """Print the read and profile rates; return the profile's index of record offsets."""
    profiler.warm_up()  # loaded once per worker process, not per file
    reads, profiles, profile_cpus = [], [], []
    for _ in range(rounds):
        started = time.perf_counter()
        reader = range_reader(store, "corpus.jsonl", size)
        while reader.read(8 * MIB):
            pass
        reads.append(time.perf_counter() - started)
        started, cpu = time.perf_counter(), time.process_time()
        result = profiler.profile(range_reader(store, "corpus.jsonl", size), "corpus.jsonl", size)
        profiles.append(time.perf_counter() - started)
        profile_cpus.append(time.process_time() - cpu)
        assert result.records == records, (result.records, records)
    read_rate = size / MIB / statistics.median(reads)
    profile_rate = size / MIB / statistics.median(profiles)
    print(f"read from the object store: {read_rate:8.1f} MiB/s  (median of {rounds})")
    print(
        f"profile (one worker):       {profile_rate:8.1f} MiB/s  "
        f"({size / MIB / statistics.median(profile_cpus):.1f} MiB per CPU-second)"
    )
    print(f"ratio profile / read:       {profile_rate / read_rate:8.3f}  (target >= 0.25)")
    print(f"load average:               {os.getloadavg()[0]:8.1f}")
    return result.record_offsets


if __name__ == "__main__":
    main()
