"""Video: decode/encode (``io``), tracks over time (``tracking``), the two-pass pipeline
(``pipeline``), keyframe segments for parallel runs (``segments``).

Codecs come from PyAV's wheels (FFmpeg inside; see docs/VIDEO.md for what they encode and
their licences). Importing this package does not import PyAV: only ``io`` does, on use.
"""

DETECT_EVERY = 4  # default: the detector on every 4th frame, and on every frame around a change
