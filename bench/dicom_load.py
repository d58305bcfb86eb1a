"""DICOM copies of the training radiographs, for bench/pipeline.py's `--dicom-size`.

The training images are 224x224 JPEGs of about 6 KB. EMRs send DICOM: digital
radiographs of 1 to 30 MB, 12 bits stored in 16, windowed by the reader. Each of these
copies is one training image enlarged to `size` pixels a side and stored that way, a DX
"for presentation" instance with its own Study, Series and SOP Instance UIDs and a
made-up patient, so the upload and the worker pay what an EMR's instance costs them:
reading a file of that size, windowing it, hashing its pixels, storing it, reading it
back. Every copy has its own pixels (enlarged from a different image), so none of the
worker's results are reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Digital X-Ray Image Storage - For Presentation.
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
BITS_STORED = 12
BITS_ALLOCATED = 16


def describe(size: int) -> str:
    """What the copies of `size` pixels a side are, for the benchmark's report."""
    megabytes = size * size * BITS_ALLOCATED / 8 / 1e6
    return (
        f"DICOM DX instances of {size}x{size} pixels, {BITS_STORED} bits stored in {BITS_ALLOCATED} "
        f"({megabytes:.1f} MB each), enlarged from the training radiographs"
    )


def write_dicom_copies(images: list[Path], folder: Path, size: int) -> list[Path]:
    """One DICOM file per image in `folder`, in the same order, named after the image."""
    from mlcore.preprocessing import load_grayscale_file

    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for number, image in enumerate(images):
        gray = Image.fromarray(load_grayscale_file(image), mode="L").resize((size, size), Image.Resampling.BILINEAR)
        # 8 bits spread over the 12 stored, so the reader's window maps them back.
        pixels = np.asarray(gray, dtype=np.uint16) << (BITS_STORED - 8)
        path = folder / f"{image.stem}.dcm"
        _dataset(pixels, patient_number=number).save_as(path, enforce_file_format=True)
        copies.append(path)
    return copies


def _dataset(pixels: np.ndarray, patient_number: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    # Made up: the benchmark's patients are children, inside the model's intended use.
    ds.PatientID = f"BENCH-{patient_number:06d}"
    ds.PatientName = "Bench^Patient"
    ds.PatientAge = "003Y"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = BITS_ALLOCATED
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2**BITS_STORED // 2
    ds.WindowWidth = 2**BITS_STORED
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds
