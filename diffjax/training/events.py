"""TensorBoard event files for scalars, written directly (no TensorFlow, tensorboardX or torch).

An event file is a sequence of TFRecords, each holding one serialised ``tensorflow.Event``
protocol buffer. Only the few fields scalars need are encoded here:

  TFRecord: uint64 length | uint32 masked CRC-32C(length) | data | uint32 masked CRC-32C(data)
  Event:    1 wall_time (double) | 2 step (int64) | 3 file_version (string) | 5 summary
  Summary:  1 value (repeated) ; Value: 1 tag (string) | 2 simple_value (float)

Importing a TensorBoard writer library cost 2-3 s at every start (tensorboardX imports torch
when it is installed); this module costs nothing.
"""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import time
from typing import Mapping


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli polynomial, reflected
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data +
          struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
  value &= 0xFFFFFFFFFFFFFFFF  # int64 fields: negative numbers as two's complement
  out = bytearray()
  while True:
    low, value = value & 0x7F, value >> 7
    out.append(low | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          scalars: Mapping[str, float] | None = None) -> bytes:
  """One serialised Event."""
  out = bytes([1 << 3 | 1]) + struct.pack("<d", wall_time) + bytes([2 << 3]) + _varint(step)
  if file_version is not None:
    out += _field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _field(1, _field(1, tag.encode()) + bytes([2 << 3 | 5]) + struct.pack("<f", value))
        for tag, value in scalars.items())
    out += _field(5, values)
  return out


class EventFileWriter:
  """Appends scalar events to ``<logdir>/events.out.tfevents.<time>.<host>.<pid>``."""

  def __init__(self, logdir: str | pathlib.Path):
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
    self._file = open(self.path, "ab")
    self._file.write(tfrecord(event(now, file_version="brain.Event:2")))
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._file.write(tfrecord(event(time.time(), int(step),
                                    scalars={k: float(v) for k, v in values.items()})))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()
