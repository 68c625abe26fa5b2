"""TensorBoard event files written without TensorFlow, tensorboardX or protobuf: scalars and text.

An event file is a sequence of TFRecords (``length: uint64 LE``, ``masked CRC-32C of length: uint32``,
``data``, ``masked CRC-32C of data``), each holding one serialised ``Event`` protocol buffer. The first
record names the format (``file_version = "brain.Event:2"``); every later one carries a ``Summary`` of tagged
values at a step. Only the handful of protobuf fields TensorBoard reads for scalars and text are encoded
here (field numbers from TensorBoard's ``event.proto``, ``summary.proto`` and ``tensor.proto``). The whole
file is built in memory and written atomically, so an export that is interrupted leaves the previous file
and a repeated export replaces it instead of adding a second copy of every point.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

FILE_VERSION = b"brain.Event:2"
# TensorBoard reads every file whose name holds "tfevents"; one fixed name per run, so an export replaces it.
FILE_NAME = "events.out.tfevents.ioussl"
_DT_STRING = 7  # tensorflow.DataType of a string tensor
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK_DELTA = 0xA282EAD8


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord framing uses it."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """The CRC TFRecords store: rotated right by 15 bits plus a constant (so a CRC of CRCs is not trivial)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord around ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


# ---- protocol buffer wire format: varints and length-delimited fields ----


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf encodes them
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


@dataclass(frozen=True)
class Scalar:
    """One point of a scalar series."""

    tag: str
    step: int
    value: float
    wall_time: float


@dataclass(frozen=True)
class Text:
    """A text (Markdown) summary, shown by TensorBoard's Text tab."""

    tag: str
    step: int
    text: str
    wall_time: float


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step) + body


def _scalar_event(point: Scalar) -> bytes:
    value = _bytes_field(1, point.tag.encode()) + _key(2, 5) + struct.pack("<f", point.value)
    return _event(point.wall_time, point.step, _bytes_field(5, _bytes_field(1, value)))


def _text_event(item: Text) -> bytes:
    metadata = _bytes_field(1, _bytes_field(1, b"text"))  # SummaryMetadata.plugin_data.plugin_name
    tensor = _key(1, 0) + _varint(_DT_STRING) + _bytes_field(2, b"") + _bytes_field(8, item.text.encode())
    value = _bytes_field(1, item.tag.encode()) + _bytes_field(9, metadata) + _bytes_field(8, tensor)
    return _event(item.wall_time, item.step, _bytes_field(5, _bytes_field(1, value)))


def event_file(items: Iterable[Scalar | Text], wall_time: float) -> bytes:
    """The bytes of an event file: the version record at ``wall_time``, then one record per item.

    Non-finite scalars are written as they are (TensorBoard draws NaN and infinity as such).
    """
    chunks = [record(_key(1, 1) + struct.pack("<d", wall_time) + _bytes_field(3, FILE_VERSION))]
    for item in items:
        chunks.append(record(_scalar_event(item) if isinstance(item, Scalar) else _text_event(item)))
    return b"".join(chunks)
