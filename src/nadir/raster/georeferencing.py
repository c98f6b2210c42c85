"""Where an image lies on the Earth when its file does not say: GDAL's sidecar files.

PNG and JPEG hold no georeferencing. GDAL keeps it beside them: in a PAM sidecar
`<image>.aux.xml` (what `gdal_translate` writes for a PNG, e.g. RarePlanes' 512 px tiles) or a
world file (`.pgw`, `.pngw`, `.wld`, ...; six numbers, no CRS).

Every nadir job runs with GDAL_PAM_ENABLED=NO, so that GDAL never writes an `.aux.xml` beside an
input it reads (a placed file may be a hard link to the user's own copy). With PAM off GDAL
still reads world files (the drivers do, not PAM) but never reads an `.aux.xml`, so nadir reads
the sidecar's SRS and GeoTransform itself: a read-only parse that cannot write anything, which
enabling PAM for the read could not promise.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path, PurePosixPath

from nadir.core.errors import InputError

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
PAM_SUFFIX = ".aux.xml"
WORLD_FILE_SUFFIXES = {".pgw", ".pngw", ".tfw", ".tifw", ".tiffw", ".jgw", ".jpgw", ".jpegw",
                       ".wld"}
MAX_SIDECAR_BYTES = 1 << 20  # a PAM sidecar is a few kB; a larger one is not read
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def sidecar_image_stem(name: str) -> str | None:
    """The stem of the image a file is a sidecar of (`x.png.aux.xml`, `x.pgw` -> `x`), or None
    when the name is not a sidecar's."""
    lower = name.lower()
    if lower.endswith(PAM_SUFFIX):
        image = PurePosixPath(name[:-len(PAM_SUFFIX)])
        return image.stem if image.suffix.lower() in IMAGE_SUFFIXES else None
    if PurePosixPath(lower).suffix in WORLD_FILE_SUFFIXES:
        return PurePosixPath(name).stem
    return None


def is_sidecar_of(sidecar: str, image: str) -> bool:
    """Whether a file name is a sidecar of an image name in the same folder."""
    if sidecar.lower() == image.lower() + PAM_SUFFIX:
        return True
    return (PurePosixPath(sidecar.lower()).suffix in WORLD_FILE_SUFFIXES
            and PurePosixPath(sidecar).stem == PurePosixPath(image).stem)


def parse_pam(text: str, origin: str | Path) -> tuple[str | None, list[float] | None]:
    """(CRS, affine a b c d e f) from the text of a PAM sidecar; None for what it lacks.

    The text is untrusted: a document type or entity declaration is refused before parsing
    (no entity expansion), and the GeoTransform must be six finite numbers."""
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise InputError(origin, "a GDAL .aux.xml sidecar with a DOCTYPE or ENTITY declaration "
                                 "is refused (a PAM sidecar has none)")
    try:
        # DOCTYPE and ENTITY declarations are refused above, so expat expands no entity (the
        # attacks defusedxml guards against); expat never fetches external resources.
        root = ElementTree.fromstring(text)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise InputError(origin, f"not a readable GDAL .aux.xml sidecar ({exc}); copy it "
                                 "again or delete it") from None
    if root.tag != "PAMDataset":
        raise InputError(origin, f"expected a GDAL PAM sidecar (<PAMDataset>), got <{root.tag}>")
    srs = (root.findtext("SRS") or "").strip() or None
    transform = None
    geotransform = root.findtext("GeoTransform")
    if geotransform is not None:
        try:
            c, a, b, f, d, e = (float(v) for v in geotransform.replace(",", " ").split())
        except ValueError:
            raise InputError(origin, f"GeoTransform {geotransform.strip()!r} is not six "
                                     "numbers") from None
        transform = [a, b, c, d, e, f]
        if not all(abs(v) < float("inf") for v in transform) or a * e - b * d == 0:
            raise InputError(origin, f"GeoTransform {geotransform.strip()!r} does not map "
                                     "pixels to coordinates")
    return srs, transform


def sidecar_text(data: bytes, origin: str | Path) -> str:
    """The text of a sidecar's bytes (read at most MAX_SIDECAR_BYTES + 1 of them), refusing
    one too large to be a sidecar."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise InputError(origin, f"larger than {MAX_SIDECAR_BYTES} bytes: not a GDAL .aux.xml "
                                 "sidecar")
    return data.decode("utf-8", errors="replace")


def read_sidecar(sidecar: Path) -> str:
    with open(sidecar, "rb") as fh:
        return sidecar_text(fh.read(MAX_SIDECAR_BYTES + 1), sidecar)


def merge(header_crs: str | None, header_transform, pam: tuple | None
          ) -> tuple[str | None, list[float] | None]:
    """An image's CRS and transform as GDAL with PAM on would give them: its PAM sidecar's
    where the sidecar has them (GDAL's default GDAL_GEOREF_SOURCES puts PAM first), else its
    own header's (GeoTIFF tags, or a world file, which GDAL reads with PAM off too)."""
    transform = [float(v) for v in list(header_transform)[:6]] if header_transform else None
    if transform is not None and tuple(transform) == IDENTITY and header_crs is None:
        transform = None  # GDAL's stand-in for "no geotransform"
    pam_crs, pam_transform = pam or (None, None)
    return pam_crs or header_crs, pam_transform or transform


def crs_text(crs, origin: str | Path) -> str | None:
    """A CRS (rasterio's, or a sidecar's WKT) as the short text the manifest and chips record:
    its authority code where it has one."""
    if crs is None:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(crs).to_string()
    except CRSError as exc:
        raise InputError(origin, f"unreadable CRS {str(crs)[:80]!r} ({exc})") from None


def georeferencing(image: str | Path, header_crs, header_transform, pam_text: str | None
                   ) -> tuple[str | None, list[float] | None]:
    """`merge` of an image's header and the text of its PAM sidecar (None: it has none)."""
    sidecar = f"{image}{PAM_SUFFIX}"
    pam = parse_pam(pam_text, sidecar) if pam_text is not None else None
    crs, transform = merge(crs_text(header_crs, image), header_transform, pam)
    return crs_text(crs, sidecar), transform


def local_georeferencing(image: Path, header_crs, header_transform
                         ) -> tuple[str | None, list[float] | None]:
    """`georeferencing` of an image on disk, with the PAM sidecar beside it if there is one."""
    sidecar = Path(f"{image}{PAM_SUFFIX}")
    text = read_sidecar(sidecar) if sidecar.is_file() else None
    return georeferencing(image, header_crs, header_transform, text)


def scene_georeferencing(src, image: Path):
    """An open scene's CRS and affine transform: its header's, completed by the PAM sidecar
    beside it (GDAL's PAM stays off); the identity transform without one."""
    from affine import Affine

    crs, transform = local_georeferencing(image, src.crs, src.transform)
    return crs, Affine(*transform) if transform else Affine.identity()
