"""How many values a DICOM data set holds, counted before pydicom reads it.

pydicom reads every data element, and every value of a multi-valued one, in Python: 5
million empty private elements in 38 MB took 50 s of a web process's CPU and 1.9 GB, and a
UC element of 20 MB of backslashes 1.7 s and 273 MB (bad-input review). This walk reads
only the element headers, as pydicom will (the same transfer syntax, the same long-length
VRs, undefined lengths read as sequences, UN of undefined length as implicit VR), and counts
the multi-valued ones' values with bytes.count (C speed). It stops at the budget, so its
own cost is bounded too. Where the bytes stop making sense it stops counting, and pydicom
judges the file as it would have.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

# Elements, sequence items and values a data set may hold. A radiograph holds a few
# hundred; a multi-frame image's per-frame groups some tens of thousands.
MAX_VALUES = 100_000
# Sequences within sequences: real objects nest a handful deep.
MAX_DEPTH = 32

UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# VRs whose values pydicom splits on backslashes, one Python object each.
_SPLIT_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"})
# VRs pydicom unpacks into a list of numbers, by the size of one.
_NUMBER_SIZES = {"AT": 4, "FD": 8, "FL": 4, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
_PIXEL_DATA = 0x7FE00010


class TooManyValues(Exception):
    """More than MAX_VALUES values, or sequences nested more than MAX_DEPTH deep."""


@dataclass
class _Walk:
    data: bytes
    little_endian: bool
    left: int = MAX_VALUES

    def spend(self, values: int) -> None:
        self.left -= values
        if self.left < 0:
            raise TooManyValues

    def unpack(self, layout: str, at: int) -> tuple:
        return struct.unpack_from(("<" if self.little_endian else ">") + layout, self.data, at)

    def data_set(self, at: int, end: int, implicit: bool, depth: int) -> int:
        """Walk elements from `at` to `end` or an item's end; where the walk stopped."""
        implicit = _encoding_of_data_set(self.data, at, end, implicit, in_sequence=depth > 0)
        while at + 8 <= end:
            group, element = self.unpack("HH", at)
            if (group, element) == (0xFFFE, _ITEM_END):
                return at + 8
            tag = group << 16 | element
            vr_bytes = self.data[at + 4 : at + 6]
            # Two bytes outside "AA" to "ZZ" where an explicit VR belongs are read as
            # implicit VR, as pydicom reads them (writers that switch inside sequences).
            if implicit or not b"AA" <= vr_bytes <= b"ZZ":
                vr, (length,), at = _dictionary_vr(tag), self.unpack("I", at + 4), at + 8
            elif (vr := vr_bytes.decode("latin-1")) in _LONG_LENGTH_VRS:
                (length,), at = self.unpack("I", at + 8), at + 12
            else:
                (length,), at = self.unpack("H", at + 6), at + 8
            self.spend(self._values(vr, at, length))
            if length == UNDEFINED_LENGTH:
                if tag == _PIXEL_DATA:
                    at = self.fragments(at, end)
                else:
                    at = self.sequence(at, end, implicit or vr == "UN", depth + 1)
            else:
                if vr == "SQ":
                    self.sequence(at, min(at + length, end), implicit, depth + 1)
                at += length
        return at

    def sequence(self, at: int, end: int, implicit: bool, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise TooManyValues
        while at + 8 <= end:
            group, element, length = self.unpack("HHI", at)
            at += 8
            if (group, element) == (0xFFFE, _SEQUENCE_END):
                return at
            # Any other tag is read as an item, as pydicom reads it (with a warning): taken
            # for the walk's end, it let a sequence hide 1.5 million elements (diff review).
            self.spend(1)
            if length == UNDEFINED_LENGTH:
                at = self.data_set(at, end, implicit, depth)
            else:
                self.data_set(at, min(at + length, end), implicit, depth)
                at += length
        return at

    def fragments(self, at: int, end: int) -> int:
        while at + 8 <= end:
            group, element, length = self.unpack("HHI", at)
            at += 8
            if (group, element) != (0xFFFE, _ITEM):
                return at
            self.spend(1)
            at += length
        return at

    def _values(self, vr: str, at: int, length: int) -> int:
        if length == UNDEFINED_LENGTH or length == 0:
            return 1
        if vr in _SPLIT_TEXT_VRS:
            return self.data.count(b"\\", at, at + length) + 1
        if vr in _NUMBER_SIZES:
            return max(1, length // _NUMBER_SIZES[vr])
        return 1


def _dictionary_vr(tag: int) -> str:
    try:
        choices = dictionary_VR(tag).split(" or ")
    except KeyError:  # private or unknown: pydicom keeps the bytes (UN)
        return "UN"
    # "US or OW" (LUT Data): pydicom keeps the bytes until it knows which; counted as
    # numbers, two VOI LUTs of 65,536 entries refused a real CR (diff review).
    return "OW" if "OW" in choices or "OB" in choices else choices[0]


def _encoding_of_data_set(data: bytes, at: int, end: int, implicit: bool, *, in_sequence: bool) -> bool:
    """Whether a data set (the file's, or an item's) is implicit VR, decided as pydicom
    decides it: by the first element's VR bytes, except that an item of an implicit
    sequence stays implicit. Walked as the file meta said, a data set written explicit
    under an implicit meta hid its elements from the count (diff review)."""
    if (in_sequence and implicit) or at + 6 > end:
        return implicit
    return not (0x40 < data[at + 4] < 0x5B and 0x40 < data[at + 5] < 0x5B)


def check_value_count(data: bytes, start: int, *, little_endian: bool) -> None:
    """Raise TooManyValues when the data set from `start` holds more than MAX_VALUES values.
    A command set (group 0000) before it is always implicit VR little endian; the data set's
    own encoding is settled by its first element (`_encoding_of_data_set`)."""
    walk = _Walk(data, little_endian)
    at = start
    try:
        while at + 8 <= len(data) and data[at : at + 2] == b"\x00\x00":
            (length,) = struct.unpack_from("<I", data, at + 4)
            walk.spend(1)
            at += 8 + length
        walk.data_set(at, len(data), implicit=False, depth=0)  # `implicit` is decided at the top
    except struct.error:  # a header cut short by the file's end: pydicom refuses it as truncated
        return
