"""Large image sources cut into chunks that any process can read on its own.

A chunk (a :class:`Unit`) is a few hundred images of one source: files ``[start, stop)`` of a
folder, zip or .npz listing (read by ``core.data``, exactly as a single reader would batch
them), rows ``[start, stop)`` of a Parquet shard with an image column, or samples
``[start, stop)`` of a WebDataset tar shard. Shards are local paths or fsspec URLs
(``s3://bucket/train-{0000..0099}.tar`` style globs are written ``s3://bucket/train-*.tar``).
Every image goes through ``core.images.load_image`` (the one conversion policy), and a bad
image is listed with a one-line reason and skipped, as everywhere else.

A chunk never spans two shards, so a worker opens one file per chunk; both engines (this
process, and the Ray workers of ``core.distributed``) read the same chunks.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from core.data import IMAGE_EXTENSIONS, MAX_ARCHIVE_BYTES, load_images
from core.images import ImageProblem, LoadedImages, load_image, stack_images
from core.errors import ImageError

SHARD_SUFFIXES = (".parquet", ".tar")
#: Columns tried, in order, for a Parquet shard's image bytes and its ids.
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp", "bytes")
ID_COLUMNS = ("id", "key", "__key__", "file_name", "path")


@dataclass(frozen=True)
class Unit:
    """One chunk of one source: what a worker reads and decodes in one go."""

    kind: str  # "files" (core.data: folder, zip, npz, image), "parquet" or "tar"
    location: str  # the source or shard (path or URL)
    start: int
    stop: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Unit":
        return cls(**json.loads(text))


def is_shard_source(spec: str) -> bool:
    """True for Parquet or tar shards (a file, a glob, or a folder of them) and any URL."""
    if "://" in spec:
        return True
    path = Path(spec)
    if path.suffix.lower() in SHARD_SUFFIXES:
        return True
    if path.is_dir():
        return any(child.suffix.lower() in SHARD_SUFFIXES for child in path.iterdir())
    return False


def _fsspec():
    try:
        import fsspec
        import fsspec.core  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImageError("Parquet and tar shards need fsspec and pyarrow: pip install -e '.[ray]'.") from None
    return fsspec


def _filesystem(spec: str):
    fsspec = _fsspec()
    try:
        return fsspec.core.url_to_fs(spec)
    except (ImportError, ValueError) as exc:
        raise ImageError(f"{spec}: cannot open this location ({exc}); install the fsspec backend for it, or give a local path.") from None


def shard_files(spec: str) -> list[str]:
    """The shard files of a source (a shard, a glob, or a folder of shards), sorted, as URLs or paths."""
    fs, path = _filesystem(spec)
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.ls(path, detail=False) if PurePosixPath(p).suffix.lower() in SHARD_SUFFIXES]
    elif fs.exists(path):
        found = [path]
    else:
        raise ImageError(f"{spec}: no such file or folder; give a Parquet or tar shard, a glob of them, or a folder of them.")
    shards = sorted(p for p in found if PurePosixPath(p).suffix.lower() in SHARD_SUFFIXES)
    if not shards:
        raise ImageError(f"{spec}: holds no .parquet or .tar shards.")
    return [fs.unstrip_protocol(p) if "://" in spec else p for p in shards]


def plan_units(spec: str, chunk: int) -> list[Unit]:
    """The chunks of ``chunk`` images (files for folders and zips) that make up a source, in order."""
    if not is_shard_source(spec):
        if not Path(spec).exists():
            raise ImageError(f"{spec}: the path does not exist; give a folder, a .zip, a .npz or an image file.")
        # A listing with max_files=0 reads no file; `skipped` is then the number of files.
        total = load_images(spec, channels=1, size=1, max_files=0).skipped
        return [Unit("files", spec, start, min(start + chunk, total)) for start in range(0, max(total, 1), chunk)]
    units = []
    for shard in shard_files(spec):
        if shard.lower().endswith(".parquet"):
            kind, total = "parquet", _parquet_rows(shard)
        else:
            kind, total = "tar", len(_tar_samples(shard))
        units += [Unit(kind, shard, start, min(start + chunk, total)) for start in range(0, total, chunk)]
    return units


def load_unit(unit: Unit, *, channels: int, size: tuple[int, int]) -> LoadedImages:
    """Read and convert one chunk; bad images are listed in ``errors``, the rest returned in order."""
    if unit.kind == "files":
        loaded = load_images(unit.location, channels=channels, size=size, first_file=unit.start, max_files=unit.stop - unit.start)
        loaded.skipped = 0
        return loaded
    named = _parquet_images(unit) if unit.kind == "parquet" else _tar_images(unit)
    tensors, ids, notes, errors = [], [], [], []
    for name, data in named:
        if isinstance(data, ImageProblem):
            errors.append(data)
            continue
        try:
            tensor, note = load_image(data, name=name, channels=channels, size=size)
        except ImageError as error:
            errors.append(ImageProblem(name, str(error)))
            continue
        tensors.append(tensor)
        ids.append(name)
        notes.append(note)
    return LoadedImages(stack_images(tensors, channels, *size), ids, notes, errors)


def iter_units(spec: str, *, channels: int, size: tuple[int, int], chunk: int) -> Iterator[LoadedImages]:
    """Every chunk of a source, read in this process, in order."""
    for unit in plan_units(spec, chunk):
        yield load_unit(unit, channels=channels, size=size)


def _short(location: str) -> str:
    return PurePosixPath(location.split("://", 1)[-1]).name


# ----------------------------------------------------------------------------- Parquet


def _parquet_file(location: str):
    fsspec = _fsspec()
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(fsspec.open(location, "rb").open())
    except Exception as error:  # ArrowInvalid, OSError: not a Parquet file, truncated footer
        raise ImageError(f"{location}: not a readable Parquet file ({type(error).__name__}: {error}).") from None


def _parquet_rows(location: str) -> int:
    return _parquet_file(location).metadata.num_rows


def _column(names: list[str], wanted: tuple[str, ...]) -> str | None:
    lower = {n.lower(): n for n in names}
    return next((lower[w] for w in wanted if w in lower), None)


def _parquet_images(unit: Unit) -> Iterator[tuple[str, bytes | ImageProblem]]:
    """(id, image bytes) for rows [start, stop); only the row groups that hold them are read."""
    parquet = _parquet_file(unit.location)
    names = parquet.schema_arrow.names
    image_col, id_col = _column(names, IMAGE_COLUMNS), _column(names, ID_COLUMNS)
    if image_col is None:
        raise ImageError(f"{unit.location}: no image column (looked for {', '.join(IMAGE_COLUMNS)}); name the column of image bytes 'image'.")
    offset, short = 0, _short(unit.location)
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset + rows > unit.start and offset < unit.stop:
            table = parquet.read_row_group(group, columns=[c for c in (image_col, id_col) if c])
            lo, hi = max(unit.start - offset, 0), min(unit.stop - offset, rows)
            images = table.column(image_col).slice(lo, hi - lo).to_pylist()
            ids = table.column(id_col).slice(lo, hi - lo).to_pylist() if id_col else [None] * (hi - lo)
            for row, (value, given) in enumerate(zip(images, ids), start=offset + lo):
                name = f"{short}:{given}" if given is not None else f"{short}[{row}]"
                # Hugging Face datasets store an image as {"bytes": ..., "path": ...}.
                data = value.get("bytes") if isinstance(value, dict) else value
                if not isinstance(data, (bytes, bytearray)):
                    yield name, ImageProblem(name, f"{name}: the {image_col!r} cell holds no image bytes; store encoded image files (PNG, JPEG) there.")
                else:
                    yield name, bytes(data)
        offset += rows


# ----------------------------------------------------------------------------- WebDataset tar


def _open_tar(location: str) -> tarfile.TarFile:
    fsspec = _fsspec()

    try:
        return tarfile.open(fileobj=fsspec.open(location, "rb").open(), mode="r:")
    except (tarfile.TarError, OSError) as error:
        raise ImageError(f"{location}: not a readable (uncompressed) tar shard ({error}).") from None


def _tar_samples(location: str, tar: tarfile.TarFile | None = None) -> list[tarfile.TarInfo]:
    """One image member per WebDataset sample (members sharing the key before the first dot)."""
    tar = tar or _open_tar(location)
    chosen: dict[str, tarfile.TarInfo] = {}
    try:
        for member in tar:
            path = PurePosixPath(member.name)
            if not member.isfile() or any(p.startswith(".") for p in path.parts):
                continue
            key = str(path.parent / path.name.split(".", 1)[0])
            if ("." + path.name.split(".")[-1].lower()) in IMAGE_EXTENSIONS and key not in chosen:
                chosen[key] = member
    except tarfile.TarError as error:
        raise ImageError(f"{location}: the tar shard is truncated or corrupt ({error}).") from None
    return list(chosen.values())


def _tar_images(unit: Unit) -> Iterator[tuple[str, bytes | ImageProblem]]:
    tar = _open_tar(unit.location)
    short = _short(unit.location)
    for member in _tar_samples(unit.location, tar)[unit.start:unit.stop]:
        name = f"{short}:{member.name}"
        if member.size > MAX_ARCHIVE_BYTES:
            yield name, ImageProblem(name, f"{name}: {member.size:,} bytes, more than the {MAX_ARCHIVE_BYTES:,}-byte limit of one image.")
            continue
        try:
            yield name, tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as error:
            yield name, ImageProblem(name, f"{name}: could not be read ({error}).")

