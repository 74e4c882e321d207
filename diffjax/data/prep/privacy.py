"""Privacy steps: face detection and anonymisation, and scrubbing personal data from captions.

Metadata (EXIF, GPS, XMP) needs no step of its own: `checks.decode_validated` keeps only pixels
and every output image is re-encoded from them, so no metadata can reach a shard.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageFilter

FACE_MODES = ("blur", "pixelate", "none")


class FaceDetector:
  """OpenCV's YuNet detector (``cv2.FaceDetectorYN``) from an ONNX file given by path, at two
  scales with a verification step for what only the finer scale finds.

  Pass 1: the image upscaled so its shorter side is at least ``min_side`` (YuNet misses faces
  under ~10 pixels). Pass 2 (``second_pass``), only for images that are large at that scale
  (shorter side >= 2 * ``min_side``, so a face could be small in them): the image at twice the
  pass-1 scale, in overlapping tiles when that is larger than ``tile`` pixels. YuNet finds faces
  of 20-50 pixels in clutter far more often at 2x; it also fires on more animal faces there, so
  a pass-2 box that pass 1 did not find is kept only if YuNet, run again on a crop around it
  scaled so the box is about 50 pixels, scores it at least ``verify_score``. Boxes are in pixels
  of the original image. Small images (CIFAR-10's 32 px) get pass 1 only.
  """

  def __init__(self, model_path: str, score_threshold: float = 0.8, min_side: int = 64,
               second_pass: bool = True, verify_score: float = 0.85, tile: int = 1024):
    import cv2
    # Errors only: the DNN backend warns about unsupported targets on every create.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    self._cv2 = cv2
    self._detector = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold,
                                               0.3, 5000)
    self.min_side, self.second_pass = min_side, second_pass
    self.verify_score, self.tile = verify_score, tile

  def _run(self, bgr: np.ndarray, scale: float) -> list[tuple[float, float, float, float, float]]:
    """YuNet on ``bgr`` resized by ``scale``; boxes ``(x, y, w, h, score)`` in ``bgr`` pixels."""
    cv2 = self._cv2
    h, w = bgr.shape[:2]
    if scale != 1.0:
      bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_LINEAR)
    self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
    _, faces = self._detector.detect(bgr)
    if faces is None:
      return []
    return [(f[0] / scale, f[1] / scale, f[2] / scale, f[3] / scale, float(f[14]))
            for f in faces]

  def _tiles(self, h: int, w: int, scale: float):
    """``(y0, x0, y1, x1)`` windows whose scaled size is at most ``tile`` pixels, overlapping
    by a quarter of a window so a face cut by one edge is whole in the next window."""
    side = max(16, int(self.tile / scale))
    step = max(8, side * 3 // 4)
    ys = list(range(0, max(h - side, 0) + 1, step))
    xs = list(range(0, max(w - side, 0) + 1, step))
    if ys[-1] + side < h:
      ys.append(h - side)
    if xs[-1] + side < w:
      xs.append(w - side)
    return [(y, x, min(h, y + side), min(w, x + side)) for y in ys for x in xs]

  def _verified(self, bgr: np.ndarray, box) -> float:
    """YuNet's score for ``box`` on a crop around it scaled so the box is about 50 pixels."""
    x, y, w, h = box[:4]
    side = max(w, h) * 2.2
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(bgr.shape[1], cx + side / 2)), int(min(bgr.shape[0], cy + side / 2))
    if x1 - x0 < 4 or y1 - y0 < 4:
      return 0.0
    local = (x - x0, y - y0, w, h)
    found = self._run(np.ascontiguousarray(bgr[y0:y1, x0:x1]), 50.0 / max(w, h))
    return max([f[4] for f in found if _iou(local, f) > 0.4], default=0.0)

  def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int, float]]:
    """Boxes ``(x, y, w, h, score)`` in pixels of ``image`` (uint8 [H, W, C])."""
    cv2 = self._cv2
    bgr = (cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR) if image.shape[-1] == 1
           else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    h, w = bgr.shape[:2]
    scale = max(1.0, self.min_side / min(h, w))
    boxes = self._run(bgr, scale)
    if self.second_pass and min(h, w) * scale >= 2 * self.min_side:
      for y0, x0, y1, x1 in self._tiles(h, w, 2 * scale):
        window = np.ascontiguousarray(bgr[y0:y1, x0:x1])
        for f in self._run(window, 2 * scale):
          cand = (f[0] + x0, f[1] + y0, f[2], f[3], f[4])
          if any(_iou(cand, b) > 0.3 for b in boxes):
            continue
          score = self._verified(bgr, cand)
          if score >= self.verify_score:
            boxes.append((*cand[:4], min(cand[4], score)))
    return [(int(b[0]), int(b[1]), int(np.ceil(b[2])), int(np.ceil(b[3])), float(b[4]))
            for b in boxes]


def _iou(a, b) -> float:
  ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
  iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
  ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
  inter = iw * ih
  union = a[2] * a[3] + b[2] * b[3] - inter
  return inter / union if union > 0 else 0.0


def expand_box(box, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
  """``(x0, y0, x1, y1)`` of a detection grown by ``margin`` of its size on every side and
  clipped to the image."""
  x, y, w, h = box[:4]
  dx, dy = margin * w, margin * h
  return (max(0, int(x - dx)), max(0, int(y - dy)), min(width, int(np.ceil(x + w + dx))),
          min(height, int(np.ceil(y + h + dy))))


def anonymise(image: np.ndarray, boxes, mode: str, margin: float = 0.2) -> np.ndarray:
  """A copy of ``image`` with every box blurred or pixelated (a strength that scales with the
  box, so no face detail survives at any size)."""
  if mode == "none" or not boxes:
    return image
  out = image.copy()
  h, w = image.shape[:2]
  for box in boxes:
    x0, y0, x1, y1 = expand_box(box, margin, h, w)
    if x1 - x0 < 2 or y1 - y0 < 2:
      continue
    region = out[y0:y1, x0:x1]
    squeeze = region.shape[-1] == 1
    pil = Image.fromarray(region[..., 0] if squeeze else region)
    if mode == "blur":
      pil = pil.filter(ImageFilter.GaussianBlur(radius=max(2.0, max(x1 - x0, y1 - y0) / 6)))
    elif mode == "pixelate":
      cells = (max(1, (x1 - x0) // 8), max(1, (y1 - y0) // 8))
      pil = pil.resize(cells, Image.Resampling.BOX).resize(pil.size, Image.Resampling.NEAREST)
    else:
      raise ValueError(f"face mode must be one of {FACE_MODES}, got {mode!r}")
    arr = np.asarray(pil)
    out[y0:y1, x0:x1] = arr[..., None] if squeeze else arr
  return out


# Caption scrubbing. Order matters: URLs with user names before e-mails (user:pass@host), cards
# and ID numbers before phone numbers (all are digit runs), phone numbers before addresses (a
# number after a street would read as a house or flat number).
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_USER_URL_PARTS = re.compile(
    r"^(?:https?://)?[^/\s@]+@"  # user[:password]@host
    r"|/(?:@|~)[\w.-]+"  # /@name, /~name
    r"|/(?:users?|u|profile|people|members?|in|author)/[\w.-]+"  # /user/name, /in/name
    r"|[?&](?:user(?:name)?|uid|login|email)=",
    re.IGNORECASE)
_SOCIAL = re.compile(r"^(?:https?://)?(?:www\.)?(?:twitter\.com|x\.com|instagram\.com|"
                     r"facebook\.com|tiktok\.com|github\.com|linkedin\.com|reddit\.com|"
                     r"flickr\.com|youtube\.com/@|pinterest\.com)/[\w.@-]+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b", re.IGNORECASE)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
def _luhn_ok(digits: str) -> bool:
  total = 0
  for i, ch in enumerate(reversed(digits)):
    d = int(ch)
    if i % 2:
      d = d * 2 - 9 if d > 4 else d * 2
    total += d
  return total % 10 == 0


def _card(match: re.Match) -> str:
  text = match.group(0)
  digits = re.sub(r"\D", "", text)
  grouped = re.fullmatch(r"\d{4}([ -]\d{4}){2,3}(?:[ -]\d{1,3})?", text) is not None
  return "[CARD_NUMBER]" if 13 <= len(digits) <= 19 and (_luhn_ok(digits) or grouped) else text


def _url(match: re.Match) -> str:
  url = match.group(0).rstrip(".,;:!?)")
  tail = match.group(0)[len(url):]
  if _USER_URL_PARTS.search(url) or _SOCIAL.match(url):
    return "[URL_WITH_USER]" + tail
  return match.group(0)


# Regions whose national formats (numbers written without a country code) are looked for;
# numbers with "+" or an international prefix are found for every region.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "JP", "CN", "BR", "MX", "AU",
                 "ZA", "RU", "KR", "NG", "TR", "ID", "PH")
_MIN_PHONE_DIGITS = 7  # shorter digit runs are years, counts and model numbers far more often
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def phone_spans(text: str, regions=PHONE_REGIONS) -> list[tuple[int, int]]:
  """``(start, end)`` of every phone number in ``text``, found by libphonenumber's matcher
  (`phonenumbers`, Google's library) at "possible" leniency: the number has a length some
  numbering plan allows. "Valid" leniency would also ask that the range be allocated today,
  which misses reserved and newly allocated ranges (UK 07700 900xxx, US 555-01xx), so for
  privacy the looser test is the right one. Dates and runs under 7 digits are left alone."""
  if sum(c.isdigit() for c in text) < _MIN_PHONE_DIGITS:
    return []
  import phonenumbers
  spans = []
  for region in ("ZZ", *regions):  # ZZ: only numbers with a country code
    for m in phonenumbers.PhoneNumberMatcher(text, region,
                                             leniency=phonenumbers.Leniency.POSSIBLE):
      # The number without its extension ("1024 x 768" reads as 1024 extension 768).
      digits = sum(c.isdigit() for c in m.raw_string) - len(m.number.extension or "")
      if (digits >= _MIN_PHONE_DIGITS and not _DATE.fullmatch(m.raw_string)
          and len(phonenumbers.national_significant_number(m.number)) >= 6):
        spans.append((m.start, m.end))
  return _merge(spans)


# usaddress (a conditional random field over tokens, its model inside the wheel) labels
# English-language addresses; an address is a house number, a street name and a street type
# (or a PO box), with a flat and a locality block that holds a postcode when they follow.
_STREET = {"AddressNumber", "AddressNumberPrefix", "AddressNumberSuffix",
           "StreetNamePreDirectional", "StreetNamePreModifier", "StreetNamePreType",
           "StreetName", "StreetNamePostType", "StreetNamePostDirectional",
           "StreetNamePostModifier", "USPSBoxType", "USPSBoxID"}
_LOCALITY = {"OccupancyType", "OccupancyIdentifier", "SubaddressType", "SubaddressIdentifier",
             "PlaceName", "StateName", "ZipCode", "CountryName"}
_NOT_STREET_WORDS = {"a", "an", "the", "on", "in", "at", "of", "with", "and", "to", "for", "by",
                     "near", "from", "into", "onto", "over", "under", "is", "are", "was"}


def _english_address_spans(text: str) -> list[tuple[int, int]]:
  import usaddress
  tokens = usaddress.tokenize(text)
  if not tokens:
    return []
  labels = [label for _, label in usaddress.parse(text)]
  starts, pos = [], 0
  for tok in tokens:  # token offsets in the original text
    pos = text.index(tok, pos)
    starts.append(pos)
    pos += len(tok)
  spans, i = [], 0
  while i < len(tokens):
    if labels[i] not in ("AddressNumber", "USPSBoxType"):
      i += 1
      continue
    j = i
    while j + 1 < len(tokens) and labels[j + 1] in _STREET:
      j += 1
    part = labels[i:j + 1]
    names = [tokens[k].strip(",.").lower() for k in range(i, j + 1)
             if labels[k] == "StreetName"]
    street = ("AddressNumber" in part and names and len(names) <= 4
              and not _NOT_STREET_WORDS & set(names)
              and ("StreetNamePostType" in part or "StreetNamePreType" in part)
              and any(c.isdigit() for c in tokens[i]))
    box_type = " ".join(tokens[k] for k in range(i, j + 1) if labels[k] == "USPSBoxType")
    box = "USPSBoxID" in part and re.search(r"box|bag|drawer|\bp\.?\s?o\b", box_type, re.I)
    if street or box:
      k = j
      while (k + 1 < len(tokens) and labels[k + 1] in _LOCALITY
             and "[" not in tokens[k + 1]):  # stop at an earlier placeholder
        k += 1
      # Up to the last flat number or postcode of the locality block that follows.
      j = max([m for m in range(j + 1, k + 1) if any(c.isdigit() for c in tokens[m])],
              default=j)
      end = starts[j] + len(tokens[j].rstrip(",;:"))
      spans.append((starts[i], end))
    i = j + 1
  return spans


# Continental European formats: no package on PyPI tags them offline (libpostal's binding needs
# its C library and a ~2 GB model download; deepparse and GLiNER download models at run time),
# so these stay patterns: a street-type word (or a compound ending in one) next to a house number.
_EU_TYPES = (r"rue|avenue|boulevard|bd|chemin|allée|impasse|quai|place|via|viale|piazza|corso|"
             r"vicolo|calle|avenida|paseo|plaza|carrer|rua|travessa|largo|praça|ulica|ul\.")
_EU_LINKS = r"(?:(?:de|del|della|delle|di|da|do|dos|das|la|le|les|du|des|l'|d')\s*)*"
_EU_NAME = r"[A-ZÀ-Þ][\w'-]*(?:\s+[A-ZÀ-Þ][\w'-]*){0,3}"
_EU_COMPOUND = (r"straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|gracht|straat|laan|"
                r"plein|kade|singel|vej|gade|gatan|gata|vägen|veien|katu|tie")
_EU_ADDRESS = re.compile(
    r"\b\d{1,4}(?:\s?(?:bis|ter|[a-z]))?,?\s+(?i:" + _EU_TYPES + r")\s+" + _EU_LINKS + _EU_NAME +
    r"|\b(?i:" + _EU_TYPES + r")\s+" + _EU_LINKS + _EU_NAME + r",?\s+(?:n\.?\s*)?\d{1,4}[a-z]?\b"
    r"|\b[A-ZÀ-Þ][\w'-]*(?:" + _EU_COMPOUND + r")\s+\d{1,4}[a-z]?\b"
    r"|\b(?:[A-ZÀ-Þ][\w'-]*\s+){1,3}(?:Straße|Strasse|Weg|Gasse|Platz|Allee)\s+\d{1,4}[a-z]?\b")


def address_spans(text: str) -> list[tuple[int, int]]:
  """``(start, end)`` of street addresses: English-language ones tagged by usaddress's CRF,
  continental European ones by pattern (see above). Only text with a digit is looked at: an
  address without a house number or PO box identifies no one."""
  if not any(c.isdigit() for c in text):
    return []
  spans = _english_address_spans(text)
  spans += [m.span() for m in _EU_ADDRESS.finditer(text)]
  return _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
  out: list[list[int]] = []
  for start, end in sorted(spans):
    if out and start <= out[-1][1]:
      out[-1][1] = max(out[-1][1], end)
    else:
      out.append([start, end])
  return [(a, b) for a, b in out]


def _replace(text: str, spans, placeholder: str) -> str:
  for start, end in reversed(spans):
    text = text[:start] + placeholder + text[end:]
  return text


def scrub_caption(text: str, phone_regions=PHONE_REGIONS) -> tuple[str, dict[str, int]]:
  """Replaces personal data with typed placeholders; returns the text and counts by type
  (``url_with_user``, ``email``, ``card_number``, ``id_number``, ``phone``, ``address``)."""
  counts: dict[str, int] = {}

  def sub(pattern, replace, kind, s):
    def fn(m):
      out = replace(m) if callable(replace) else replace
      if out != m.group(0):
        counts[kind] = counts.get(kind, 0) + 1
      return out
    return pattern.sub(fn, s)

  text = sub(_URL, _url, "url_with_user", text)
  text = sub(_EMAIL, "[EMAIL]", "email", text)
  text = sub(_CARD, _card, "card_number", text)
  text = sub(_SSN, "[ID_NUMBER]", "id_number", text)
  for kind, placeholder, find in (("phone", "[PHONE]", lambda t: phone_spans(t, phone_regions)),
                                  ("address", "[ADDRESS]", address_spans)):
    spans = find(text)
    if spans:
      counts[kind] = counts.get(kind, 0) + len(spans)
      text = _replace(text, spans, placeholder)
  return text, counts
