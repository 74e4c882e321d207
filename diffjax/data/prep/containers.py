"""What an image file's own container says about its length: is the file cut short?

A decoder that runs out of data raises whatever its plugin raises (``OSError``,
``SyntaxError``, ``EOFError``, ``struct.error``, ...), and some formats decode a cut file
without complaint when the cut falls after the pixels they read. The container, though, records
how long it is: PNG chunks and GIF sub-blocks carry their lengths, RIFF (WebP) and BMP headers
give the file size, binary PNM headers give the pixel count, TIFF directories give the offset
and length of every strip, and a JPEG's entropy-coded data ends with an EOI marker. Reading only
those structures tells a truncated file from a corrupt one without decoding anything.

`is_truncated` returns True (the container ends before its structures say), False (complete,
as far as the structures go) or None (a format this module does not walk).
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_truncated(data: bytes) -> bool | None:
  """Whether ``data`` is cut short according to its container (None: format not walked)."""
  for magic, walk in _WALKERS:
    if data.startswith(magic):
      try:
        return walk(data)
      except (IndexError, struct.error, ValueError):
        return True  # a structure ran past the end of the data
  return None


def _png(data: bytes) -> bool:
  pos = len(PNG_SIGNATURE)
  while pos + 8 <= len(data):
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    pos += 12 + length  # length, type, data, CRC
    if kind == b"IEND":
      return pos > len(data)
  return True  # no IEND chunk


def _jpeg(data: bytes) -> bool:
  # Segments before the first scan carry lengths (APP1 may hold an EXIF thumbnail with its own
  # EOI, so it must be skipped, not searched); the entropy-coded data after SOS cannot contain
  # 0xFFD9 except as the end-of-image marker (0xFF is byte-stuffed there).
  pos = 2
  while pos + 4 <= len(data):
    if data[pos] != 0xFF:
      raise ValueError("not a marker")
    marker = data[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker == 0xDA:  # start of scan
      return data.find(b"\xff\xd9", pos) < 0
    if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
      pos += 2
      continue
    pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
  return True  # no scan before the data ended


def _gif(data: bytes) -> bool:
  flags = data[10]
  pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table

  def sub_blocks(p):
    while True:
      size = data[p]
      p += 1
      if size == 0:
        return p
      p += size

  while True:
    block = data[pos]
    if block == 0x3B:  # trailer
      return False
    if block == 0x21:  # extension: label, then sub-blocks
      pos = sub_blocks(pos + 2)
    elif block == 0x2C:  # image descriptor, local colour table, LZW code size, sub-blocks
      local = data[pos + 9]
      pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
      pos = sub_blocks(pos + 1)
    else:
      raise ValueError(f"unknown GIF block 0x{block:02x}")


def _riff(data: bytes) -> bool:
  return len(data) < 8 + struct.unpack("<I", data[4:8])[0]


def _bmp(data: bytes) -> bool:
  offset = struct.unpack("<I", data[10:14])[0]
  header = struct.unpack("<I", data[14:18])[0]
  if header == 12:  # OS/2 BITMAPCOREHEADER
    width, height, _, bits = struct.unpack("<HHHH", data[18:26])
    compression, size = 0, 0
  else:
    width, height, _, bits, compression, size = struct.unpack("<iiHHII", data[18:38])
  if compression in (0, 3, 6):  # uncompressed rows, padded to 4 bytes
    size = ((abs(width) * bits + 31) // 32) * 4 * abs(height)
  return len(data) < offset + size


def _pnm(data: bytes) -> bool:
  kind = data[1:2]
  if kind not in (b"4", b"5", b"6"):
    return False  # ASCII variants: no fixed length
  fields, pos = [], 2
  wanted = 2 if kind == b"4" else 3
  while len(fields) < wanted:
    while data[pos:pos + 1].isspace() or data[pos:pos + 1] == b"#":
      if data[pos:pos + 1] == b"#":
        pos = data.index(b"\n", pos)
      pos += 1
    start = pos
    while data[pos:pos + 1].isdigit():
      pos += 1
    fields.append(int(data[start:pos]))
  pos += 1  # one whitespace byte after the header
  width, height = fields[0], fields[1]
  if kind == b"4":
    size = (width + 7) // 8 * height
  else:
    size = width * height * (3 if kind == b"6" else 1) * (2 if fields[2] > 255 else 1)
  return len(data) < pos + size


def _tiff(data: bytes) -> bool:
  order = "<" if data[:2] == b"II" else ">"
  (ifd,) = struct.unpack(order + "I", data[4:8])
  sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}
  (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
  values: dict[int, list[int]] = {}
  for i in range(count):
    entry = data[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
    tag, kind, n = struct.unpack(order + "HHI", entry[:8])
    if tag not in (273, 279, 324, 325) or kind not in (3, 4):
      continue
    width = sizes[kind]
    raw = entry[8:12] if n * width <= 4 else (
        lambda off: data[off:off + n * width])(struct.unpack(order + "I", entry[8:12])[0])
    if len(raw) < n * width:
      return True
    values[tag] = list(struct.unpack(order + ("H" if kind == 3 else "I") * n, raw[:n * width]))
  end = 0
  for offsets, counts in ((273, 279), (324, 325)):
    for off, size in zip(values.get(offsets, []), values.get(counts, [])):
      end = max(end, off + size)
  return len(data) < end


_WALKERS = (
    (PNG_SIGNATURE, _png), (b"\xff\xd8\xff", _jpeg), (b"GIF87a", _gif), (b"GIF89a", _gif),
    (b"RIFF", _riff), (b"BM", _bmp), (b"P4", _pnm), (b"P5", _pnm), (b"P6", _pnm),
    (b"II*\x00", _tiff), (b"MM\x00*", _tiff),
)
