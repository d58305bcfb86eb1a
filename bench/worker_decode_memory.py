"""Peak memory of a worker decoding one batch of large files, as `diagnostics.pipeline`
does: the batch's files are read and decoded by the storage threads, at most
`PIPELINE_DECODE_PIXELS` pixels at once.

    python -m bench.worker_decode_memory [--side 7700] [--files 8] [--case "16-bit RLE ..."]

The files are built by bench.decode_memory and stored in a scratch media folder; each
budget is measured in a fresh Python process, which reports the growth of its peak
resident memory over what importing the decoders cost, and the time taken. The worker's
memory limit is 4 GiB in deploy/k8s, for the model as well.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.decode_memory import MEMORY_PROBE, build_cases, run_probe

MEASURE = (
    MEMORY_PROBE
    + """
from django.conf import settings
from diagnostics.models import Study

media_root, files, side, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
settings.MEDIA_ROOT = media_root
settings.PIPELINE_STORAGE_THREADS = 8
settings.PIPELINE_DECODE_PIXELS = budget
# Unsaved studies: decoding a batch reads their files and touches no row.
studies = [Study(original_file=f"upload-{n}", rows=side, columns=side) for n in range(files)]

before = reset_peak()
start = time.perf_counter()
ready, grays, unreadable = pipeline._decode_all(studies)
print(json.dumps({
    "decoded": len(grays),
    "peak_mb": (kilobytes("VmHWM") - before) / 1024,
    "seconds": time.perf_counter() - start,
}))
"""
)

DEFAULT_CASE = "16-bit RLE DICOM {side}x{side} with a VOI LUT"


def measure(media_root: Path, files: int, side: int, budget: int) -> dict:
    return run_probe(MEASURE, media_root, files, side, budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=7700, help="pixels a side of each file (60 MP: 7745)")
    parser.add_argument("--files", type=int, default=8, help="files in the batch")
    parser.add_argument("--case", default=DEFAULT_CASE, help="which of bench.decode_memory's files ({side} filled in)")
    args = parser.parse_args()
    case = args.case.format(side=args.side)
    data = build_cases(args.side, bomb_side=64)[case]
    pixels = args.side * args.side
    budgets = {
        "no budget (every file at once)": pixels * args.files,
        "the default budget, MAX_IMAGE_PIXELS (60,000,000)": 60_000_000,
    }
    print(f"{args.files} x {case}, {len(data) / 1e6:.2f} MB each, 8 storage threads\n")
    print("| decode budget | decoded | peak RSS growth | time |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="pleura-batch-") as folder:
        for n in range(args.files):
            (Path(folder) / f"upload-{n}").write_bytes(data)
        for name, budget in budgets.items():
            figures = measure(Path(folder), args.files, args.side, budget)
            print(f"| {name} | {figures['decoded']} | {figures['peak_mb']:.0f} MB | {figures['seconds']:.2f} s |")


if __name__ == "__main__":
    main()
