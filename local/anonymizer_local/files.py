"""From the inputs a user names to the files the CLI and ``local-run`` write.

Both doors share one plan so that an output can never silently replace another: two inputs
that would land on the same name (``dA/p.jpg`` and ``dB/p.jpg``; ``p.jpg`` and ``P.png`` on a
case-insensitive disk) get distinct relative paths before any work starts.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
SUFFIX_FOR_FORMAT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tiff"}
SUFFIXES_OF_FORMAT = {
    "jpeg": (".jpg", ".jpeg", ".jpe"),
    "png": (".png",),
    "webp": (".webp",),
    "bmp": (".bmp",),
    "tiff": (".tif", ".tiff"),
}


@dataclass(frozen=True)
class InputFile:
    """One input and where its result goes, relative to the output folder (POSIX, unique per run)."""

    path: Path
    relative: str


def expand_inputs(inputs: Iterable[str]) -> Iterator[tuple[Path, PurePosixPath]]:
    """(file, path relative to its input) for files, folders (recursively) and globs.

    A name that matches nothing is yielded as is, for the caller to report as missing.
    """
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                yield file, PurePosixPath(file.relative_to(path).as_posix())
        elif path.is_file():
            yield path, PurePosixPath(path.name)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                yield path, PurePosixPath(path.name)
            for match in matches:
                if Path(match).is_file():
                    yield Path(match), PurePosixPath(Path(match).name)


def plan_inputs(inputs: Iterable[str]) -> list[InputFile]:
    """Every input file with a relative output path that no other input of the run shares.

    Names are compared without their suffix and case (an output's suffix follows its format;
    some disks ignore case). The first keeps its name; a later one goes under ``1/``, ``2/``...
    """
    taken: set[str] = set()
    plan = []
    for path, relative in expand_inputs(inputs):
        candidate, n = relative, 0
        while _collision_key(candidate) in taken:
            n += 1
            candidate = PurePosixPath(str(n)) / relative
        taken.add(_collision_key(candidate))
        plan.append(InputFile(path, candidate.as_posix()))
    return plan


def _collision_key(relative: PurePosixPath) -> str:
    return relative.with_suffix("").as_posix().casefold()


def output_name(relative: str, output_format: str) -> str:
    """The output's relative name: the input's own suffix (its case kept) when it already names the
    output format, else the format's usual suffix (``IMG_1.JPG`` stays; ``a.png`` as JPEG -> ``a.jpg``)."""
    path = PurePosixPath(relative)
    if path.suffix.lower() in SUFFIXES_OF_FORMAT.get(output_format, ()):
        return relative
    return path.with_suffix(SUFFIX_FOR_FORMAT[output_format]).as_posix()


class OutputClaims:
    """Output paths claimed in this run: a second claim on one path is refused, never overwritten."""

    def __init__(self) -> None:
        self._claimed: dict[str, str] = {}
        self._lock = threading.Lock()

    def claim(self, target: Path, owner: str) -> str | None:
        """None when ``target`` is ours now; else the input that already claimed it."""
        key = os.path.normcase(str(target.resolve())).casefold()
        with self._lock:
            if key in self._claimed:
                return self._claimed[key]
            self._claimed[key] = owner
        return None

    def take(self, target: Path, source: Path) -> None:
        """Claim ``target`` for ``source`` and make its folder, or refuse: it is the original itself,
        or another input's output in this run (``AnonymizerError``; nothing is written then)."""
        from anonymizer.errors import AnonymizerError

        if target.resolve() == source.resolve():
            raise AnonymizerError("output would overwrite the original; choose another output folder")
        owner = self.claim(target, str(source))
        if owner is not None:
            raise AnonymizerError(f"its output {target} is already the output of {owner}; nothing written")
        target.parent.mkdir(parents=True, exist_ok=True)


def write_atomically(target: Path, data: bytes) -> None:
    """Never leave a half-written file behind: write a temporary file beside it, then rename."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
