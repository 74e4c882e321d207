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
  """OpenCV's YuNet detector (``cv2.FaceDetectorYN``) from an ONNX file given by path.

  Small images are upscaled so their shorter side is ``min_side`` before detection (YuNet
  misses faces under ~10 pixels); boxes are mapped back to the original pixels.
  """

  def __init__(self, model_path: str, score_threshold: float = 0.6, min_side: int = 128):
    import cv2
    # Errors only: the DNN backend warns about unsupported targets on every create.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    self._cv2 = cv2
    self._detector = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold,
                                               0.3, 5000)
    self.min_side = min_side

  def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int, float]]:
    """Boxes ``(x, y, w, h, score)`` in pixels of ``image`` (uint8 [H, W, C])."""
    cv2 = self._cv2
    bgr = (cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR) if image.shape[-1] == 1
           else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    h, w = bgr.shape[:2]
    scale = max(1.0, self.min_side / min(h, w))
    if scale > 1.0:
      bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)),
                       interpolation=cv2.INTER_LINEAR)
    self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
    _, faces = self._detector.detect(bgr)
    if faces is None:
      return []
    return [(int(f[0] / scale), int(f[1] / scale), int(np.ceil(f[2] / scale)),
             int(np.ceil(f[3] / scale)), float(f[14])) for f in faces]


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
# before phone numbers (both are digit runs).
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
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}"
                    r"(?:[\s.-]\d{2,6}){1,4}(?![\w])")
_STREET = (r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|"
           r"Place|Pl|Terrace|Close|Square|Sq|Parkway|Pkwy|Highway|Hwy|Crescent|Row|Strasse|"
           r"Straße")
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?,?\s+(?:[A-Z][\w'.-]*\s+){1,4}(?:" + _STREET + r")\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    r"(?:,?\s*(?:Apt|Apartment|Suite|Unit|Flat)\.?\s*#?\w+)?"
    r"|\b[A-Z]\w*(?:straße|strasse|weg|gasse|platz)\s+\d{1,5}[a-z]?\b"
    r"|\b(?:[A-Z][\w'.-]*\s+){1,3}(?:Strasse|Straße)\s+\d{1,5}[a-z]?\b")


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


def _phone(match: re.Match) -> str:
  text = match.group(0)
  digits = re.sub(r"\D", "", text)
  if not 9 <= len(digits) <= 15:
    return text
  if re.fullmatch(r"(19|20)\d\d[-./](0?[1-9]|1[0-2])[-./]\d{1,2}", text):  # a date
    return text
  return "[PHONE]"


def _url(match: re.Match) -> str:
  url = match.group(0).rstrip(".,;:!?)")
  tail = match.group(0)[len(url):]
  if _USER_URL_PARTS.search(url) or _SOCIAL.match(url):
    return "[URL_WITH_USER]" + tail
  return match.group(0)


def scrub_caption(text: str) -> tuple[str, dict[str, int]]:
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
  text = sub(_PHONE, _phone, "phone", text)
  text = sub(_ADDRESS, "[ADDRESS]", "address", text)
  return text, counts
