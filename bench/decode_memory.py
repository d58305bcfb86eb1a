"""Peak memory and time of decoding one large or hostile upload, as the web tier does.

    python -m bench.decode_memory [--side 7700] [--bomb-side 30000]

Each file is built here, then decoded by `diagnostics.imaging.decode_upload` in a fresh
Python process (so one case's peak cannot hide another's), which reports the growth of
its peak resident memory over what importing the decoders cost, the time taken, and the
growth the process kept once the decoded image was let go.
The web pod's memory limit is 2 GiB for all its gunicorn workers (deploy/k8s), and the
worker decodes the same stored original again: one upload must stay far below that.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# The opening of every measuring script, run in a fresh interpreter: Django set up, the
# decoders imported (their own imports are not the decode's), and `kilobytes`/`reset_peak`.
# The peak is the kernel's VmHWM, reset once the decoders are imported and the file read
# (ru_maxrss would not do: Linux carries it over from the parent across exec).
MEMORY_PROBE = """
import json, os, sys, threading, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
import django
django.setup()
from diagnostics import dicom, imaging, pipeline  # noqa: F401

def kilobytes(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

def reset_peak():  # returns the resident size now, from which the peak starts again
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return kilobytes("VmRSS")
"""

MEASURE = (
    MEMORY_PROBE
    + """
data = open(sys.argv[1], "rb").read()
before = reset_peak()
start = time.perf_counter()
outcome = []

def upload():
    try:
        outcome.append("decoded %dx%d" % imaging.decode_upload(data).gray.shape[::-1])
    except imaging.RejectedUpload as refusal:
        outcome.append(f"refused {refusal.status_code}")

# In a thread of its own, as gunicorn's threads (deploy/gunicorn.conf.py) decode uploads.
thread = threading.Thread(target=upload)
thread.start()
thread.join()
print(json.dumps({
    "outcome": outcome[0],
    "peak_mb": (kilobytes("VmHWM") - before) / 1024,
    "seconds": time.perf_counter() - start,
    "kept_mb": (kilobytes("VmRSS") - before) / 1024,
}))
"""
)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(side: int, dtype) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    row = np.linspace(0, top, side).astype(dtype)
    return np.broadcast_to(row, (side, side)).copy()


def _dicom(pixel_data: bytes, *, side: int, bits: int, syntax: str, voi_lut: bool = False) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    if voi_lut:  # a gamma curve of 4096 entries of 12 bits
        item = Dataset()
        item.add_new(0x00283002, "US", [4096, 0, 12])
        item.add_new(0x00283006, "US", np.rint(4095 * (np.arange(4096) / 4095) ** 0.6).astype(int).tolist())
        ds.VOILUTSequence = [item]
    ds.PixelData = encapsulate([pixel_data])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _rle_frame(side: int, bits: int) -> bytes:
    """An RLE Lossless frame of 16- or 32-bit pixels, written as runs of 128 equal bytes: a
    few MB on the wire for side x side x 2 or 4 bytes decoded."""
    count = side * side
    runs, rest = divmod(count, 128)

    def segment(value) -> bytes:
        body = bytearray()
        for run in range(runs):
            body += bytes([0x81, value(run)])  # -127: the next byte, 128 times
        if rest:
            body += bytes([257 - rest, 0])
        return bytes(body + b"\0" * (len(body) % 2))

    # Big-endian byte planes: only the one above the lowest varies.
    planes = bits // 8
    segments = [segment(lambda run: run % 7 * 30) if plane == planes - 2 else segment(lambda run: 0)
                for plane in range(planes)]  # fmt: skip
    offsets, offset = [], 64
    for body in segments:
        offsets.append(offset)
        offset += len(body)
    header = struct.pack("<I", len(segments)) + b"".join(struct.pack("<I", o) for o in offsets)
    return header + b"\0" * (64 - len(header)) + b"".join(segments)


def build_cases(side: int, bomb_side: int) -> dict[str, bytes]:
    gray = _gradient(side, np.uint8)
    alpha = np.broadcast_to(np.where(np.arange(side) < side // 2, 0, 255).astype(np.uint8), (side, side))
    half_transparent = np.dstack([gray, gray, gray, alpha])
    jpeg = io.BytesIO()
    Image.new("L", (bomb_side, bomb_side), 128).save(jpeg, format="JPEG", quality=50)
    return {
        f"8-bit PNG {side}x{side}": _png(Image.fromarray(gray)),
        f"16-bit PNG {side}x{side}": _png(Image.fromarray(_gradient(side, np.uint16))),
        f"RGBA PNG {side}x{side}, half transparent": _png(Image.fromarray(half_transparent, "RGBA")),
        f"RGBA PNG {side}x{side}, opaque": _png(Image.fromarray(gray).convert("RGBA")),
        f"32-bit RLE DICOM {side}x{side}": _dicom(
            _rle_frame(side, 32), side=side, bits=32, syntax="1.2.840.10008.1.2.5"
        ),
        f"16-bit RLE DICOM {side}x{side}, no window": _dicom(
            _rle_frame(side, 16), side=side, bits=16, syntax="1.2.840.10008.1.2.5"
        ),
        f"16-bit RLE DICOM {side}x{side} with a VOI LUT": _dicom(
            _rle_frame(side, 16), side=side, bits=16, syntax="1.2.840.10008.1.2.5", voi_lut=True
        ),
        f"JPEG DICOM of {bomb_side}x{bomb_side} labelled 64x64": _dicom(
            jpeg.getvalue(), side=64, bits=8, syntax="1.2.840.10008.1.2.4.50"
        ),
    }


def run_probe(script: str, *arguments) -> dict:
    """The JSON line a measuring script prints last, run in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, arguments)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(path: Path) -> dict:
    return run_probe(MEASURE, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=7700, help="pixels a side of the large images (60 MP: 7745)")
    parser.add_argument("--bomb-side", type=int, default=30000, help="pixels a side of the mislabelled JPEG")
    args = parser.parse_args()
    print("| upload | file | outcome | peak RSS growth | time | RSS kept after |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="pleura-decode-") as folder:
        for name, data in build_cases(args.side, args.bomb_side).items():
            path = Path(folder) / "upload"
            path.write_bytes(data)
            figures = measure(path)
            print(
                f"| {name} | {len(data) / 1e6:.2f} MB | {figures['outcome']} | "
                f"{figures['peak_mb']:.0f} MB | {figures['seconds']:.2f} s | {figures['kept_mb']:.0f} MB |"
            )


if __name__ == "__main__":
    main()
