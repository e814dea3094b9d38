"""Regenerate docs/img/before-after.jpg from images that ship with scikit-image (no ../shared needed)."""

from pathlib import Path

import cv2
import numpy as np
from skimage import data

from anonymizer.options import parse_options
from anonymizer.pipeline import Anonymizer

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "before-after.jpg"


def main() -> None:
    before = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode(".jpg", before, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    anonymizer = Anonymizer()
    tiles = [before]
    for effect in ("blur", "pixelate", "deform"):
        result = anonymizer.anonymize(jpeg, parse_options({"targets": "face", "effect": effect}))
        tiles.append(cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_COLOR))
    strip = np.hstack([cv2.resize(t, (320, 320), interpolation=cv2.INTER_AREA) for t in tiles])
    for i, label in enumerate(("original", "blur", "pixelate", "deform")):
        cv2.putText(strip, label, (i * 320 + 10, 305), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(OUT), strip, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(OUT)


if __name__ == "__main__":
    main()
