"""Reading a scene window by window: the one window generator that chipping and inference share.

Windows step by `size - overlap`; the last row and column are shifted back to end at the
scene's edge, so no window hangs over it; a scene smaller than a window (along an axis) gives
one window at offset 0 along that axis, which `chip_pixels` pads to full size with
`pad_value`. `scene_windows` yields them in row-major order as rasterio `Window`s, each with its
valid-pixel mask, skipping (and counting) those whose nodata share exceeds `nodata_max`; the
caller reads the pixels of the windows it keeps through the `WindowReader`:
- Tiled rasters (blocks narrower than the scene) are read one window at a time: memory does not
  depend on the scene's size.
- Rasters stored in full-width rows (PNG, striped GeoTIFF) are read strictly top to bottom into
  a ring of one window row and the rows after it, so every row is decoded once and memory grows
  with the scene's width only.
GDAL's settings for one scene (`gdal_settings`) follow the same two cases.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from nadir.raster.chip_params import ChipParams
from nadir.raster.radiometry import Radiometry, named_read

GDAL_CACHE_MIN_BYTES = 8 << 20  # GDAL's block cache is capped per scene (see gdal_cache_bytes)
GDAL_CACHE_SEQUENTIAL_BYTES = 1 << 20  # for scenes read row by row, which decode each row once
READ_ROWS = 64  # rows per GDAL read of a row-sequential scene (in whole blocks, at least one)


def window_offsets(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets along one axis: a fixed stride, the last window flush with the edge."""
    if length <= size:
        return [0]
    stride = size - overlap
    offsets = list(range(0, length - size, stride))
    offsets.append(length - size)
    return offsets


def reads_by_window(src) -> bool:
    """Whether windows can be read in any order: the file is tiled (its blocks are narrower
    than the scene). Otherwise (PNG, striped GeoTIFF) it is read row by row."""
    return src.block_shapes[0][1] < src.width


def gdal_cache_bytes(src, size: int, whole_window_rows: bool = False) -> int:
    """GDAL's block cache for one scene read in windows of `size` px.

    Tiled scenes: the blocks under one window (at least 8 MiB), so that the next window of a
    row finds the blocks it shares already decoded; with `whole_window_rows`, the blocks under
    a whole row of windows, so that each block is decoded, and for a remote scene fetched, once
    (a window row straddles two block rows; the next window row reuses the lower one). That
    grows with the scene's width, like the row ring; inference asks for it: with the smaller
    cache, a 20,000 px scene of 512 px blocks read in 256 px windows decoded most blocks two to
    three times, 0.41 of the throughput of reading the whole scene at once.
    GDAL's default (5% of RAM) would let the cache grow with the scene on a large machine.
    Scenes read row-sequentially decode every row once, straight into the ring buffer, and
    need next to no cache (1 MiB measured as fast as 8 MiB on a 20,000 px PNG).
    """
    if not reads_by_window(src):
        return GDAL_CACHE_SEQUENTIAL_BYTES
    block_rows, block_cols = src.block_shapes[0]
    itemsize = np.dtype(src.dtypes[0]).itemsize
    under_window = (size + block_rows) * (size + block_cols) * src.count * itemsize
    cache = max(GDAL_CACHE_MIN_BYTES, under_window + under_window // 4)
    if whole_window_rows:
        row_bytes = src.width * src.count * itemsize
        cache = max(cache, (size + 2 * block_rows) * row_bytes * 5 // 4)
    return cache


def gdal_settings(src, size: int, threads: int, whole_window_rows: bool = False) -> dict:
    """GDAL's configuration for reading one scene in windows, which must be open with them in
    force (GDAL reads GDAL_NUM_THREADS when it opens a file): the block cache
    (`gdal_cache_bytes`), and `threads` decoding threads for compressed tiled files, whose
    blocks under a window then decode in parallel. Uncompressed files get none: there, GDAL's
    threads only cost time (3.9 vs 3.4 s for the chipping benchmark's 20,000 px scene)."""
    decoders = threads if reads_by_window(src) and src.compression is not None else 1
    return {"GDAL_CACHEMAX": gdal_cache_bytes(src, size, whole_window_rows),
            "GDAL_NUM_THREADS": decoders}


class WindowReader:
    """Reads chip windows of one scene, in row-major order, within a fixed memory bound.

    Tiled rasters are read window by window, on the calling thread. Rasters stored in
    full-width blocks (PNG, striped GeoTIFF) are read top to bottom, each row once, in whole
    blocks of about READ_ROWS rows, into a ring buffer of `size` + `ahead` + one block of
    rows, less one (at most the scene's height): GDAL decodes PNG sequentially, so going
    back up would restart the decoder. A ring row is overwritten only when no window needs it
    any more: neither the caller's current window row (the caller never goes back up) nor a
    window lent out (`lend`) and not yet given back.

    Used as a context manager, the reader decodes rows on a thread of its own, up to `ahead`
    rows past the current window row (chipping passes the stride: the next window row's new
    rows are decoded while the chips of this one are encoded); otherwise it decodes on the
    caller's thread when a window needs rows. Pixels are band-sequential (bands, rows, cols):
    GDAL fills that layout about three times faster than pixel-interleaved.
    """

    def __init__(self, src, bands: list[int], size: int, ahead: int = 0,
                 scene: str | None = None):
        self.src, self.bands, self.scene = src, bands, scene
        self.dtype = src.dtypes[0]
        self.block_rows = src.block_shapes[0][0]
        self.random_access = reads_by_window(src)
        self.masked = not all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)
        self.decoder: threading.Thread | None = None
        if not self.random_access:
            # A window's rows, the `ahead` rows after them and the rest of the block that
            # holds the last of those (rows are read in whole blocks), or the whole scene.
            self.capacity = min(src.height, size + ahead + self.block_rows - 1)
            self.read_rows = self.block_rows * max(1, READ_ROWS // self.block_rows)
            self.ring = np.empty((len(bands), self.capacity, src.width), dtype=self.dtype)
            self.ring_valid = (np.empty((1, self.capacity, src.width), dtype=bool)
                               if self.masked else None)
            self.rows_read = 0  # rows above this one are in the ring (or were)
            self.position = 0  # the first row of the caller's current window row
            self.lent: Counter[int] = Counter()  # first rows of windows lent out
            self.changed = threading.Condition()  # guards the three above, closed, error
            self.closed = False
            self.error: Exception | None = None

    def __enter__(self) -> WindowReader:
        if not self.random_access:
            self.decoder = threading.Thread(target=self._decode_ahead, daemon=True,
                                            name=f"decode {self.src.name}")
            self.decoder.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop the decoding thread (before the caller closes the file)."""
        if self.decoder is not None:
            with self.changed:
                self.closed = True
                self.changed.notify_all()
            self.decoder.join()

    @property
    def description(self) -> str:
        if self.random_access:
            return "read window by window"
        ring_bytes = self.ring.nbytes + (self.ring_valid.nbytes if self.masked else 0)
        return (f"read row-sequentially through a {ring_bytes / 2**20:.1f} MiB ring buffer of "
                f"{self.capacity} rows")

    def read(self, window: Window, out: np.ndarray | None = None) -> np.ndarray:
        """The window's pixels, (bands, rows, cols) in the file's type, in `out` when given
        (GDAL writes straight into it for tiled files)."""
        if out is None:
            out = np.empty((len(self.bands), window.height, window.width), self.dtype)
        if self.random_access:
            named_read(self.src, self.scene, window,
                       lambda: self.src.read(self.bands, window=window, out=out))
        else:
            top = 0
            for piece in self._ring_pieces(self.ring, window):
                out[:, top:top + piece.shape[1]] = piece
                top += piece.shape[1]
        return out

    def lend(self, window: Window) -> list[np.ndarray]:
        """The window's pixels, (bands, rows, cols) in the file's type, for another thread,
        in pieces of consecutive rows: views of the ring (two where the window wraps around
        its end), which stays intact until `give_back(y0)`; for tiled files, one piece read
        now. Lending needs the reader's decoding thread (`with`): a lent row would otherwise
        stop the caller that decodes."""
        if self.random_access:
            return [self.read(window)]
        if self.decoder is None:
            raise RuntimeError("lend needs the reader's decoding thread: use it with `with`")
        pieces = self._ring_pieces(self.ring, window)
        with self.changed:
            self.lent[window.row_off] += 1
        return pieces

    def give_back(self, window: Window) -> None:
        """A window lent by `lend` is no longer used: its rows may be overwritten."""
        if self.random_access:
            return
        y0 = window.row_off
        with self.changed:
            self.lent[y0] -= 1
            if not self.lent[y0]:
                del self.lent[y0]
            self.changed.notify_all()

    def valid(self, window: Window) -> np.ndarray | None:
        """The window's valid-pixel mask; None when the scene has neither nodata nor a mask.
        For row-sequential files a view of the ring (a copy where the window wraps around
        its end), intact as long as `lend`'s pixels."""
        if not self.masked:
            return None
        if self.random_access:
            return named_read(self.src, self.scene, window,
                              lambda: self.src.dataset_mask(window=window)) > 0
        pieces = self._ring_pieces(self.ring_valid, window)
        return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1))[0]

    def _ring_pieces(self, ring: np.ndarray, window: Window) -> list[np.ndarray]:
        """The window's rows of a ring, once they are in it: one view, or two where the
        window wraps around the ring's end."""
        x0, y0, cols, rows = window.col_off, window.row_off, window.width, window.height
        self._wait_for_rows(y0, y0 + rows)
        start = y0 % self.capacity
        first = min(rows, self.capacity - start)
        pieces = [ring[:, start:start + first, x0:x0 + cols]]
        if first < rows:
            pieces.append(ring[:, :rows - first, x0:x0 + cols])
        return pieces

    def _wait_for_rows(self, y0: int, end: int) -> None:
        """Rows [y0, end) are in the ring; the caller needs no row above y0 any more."""
        with self.changed:
            if y0 < self.position:
                raise RuntimeError(f"row {y0} is above the current window row "
                                   f"{self.position}; windows must go down")
            self.position = y0
            self.changed.notify_all()
        if self.decoder is None:
            self._decode(end)
        with self.changed:
            self.changed.wait_for(lambda: self.rows_read >= end or self.error is not None)
            if self.error is not None:
                raise self.error

    def _decode_ahead(self) -> None:
        """The decoding thread: every row of the scene, its error handed to the caller."""
        try:
            self._decode(self.src.height)
        except Exception as exc:  # noqa: BLE001 - raised again on the caller's thread
            with self.changed:
                self.error = exc
                self.changed.notify_all()

    def _decode(self, end: int) -> None:
        """Read rows into the ring, top to bottom, until row `end` is in it (or the reader
        is closed)."""
        src = self.src
        while self.rows_read < end:
            start = self.rows_read
            stop = self._next_read_end(start)
            if stop is None:
                return
            offset = start % self.capacity
            count = min(stop - start, self.capacity - offset)  # up to the ring's end
            window = Window(0, start, src.width, count)
            ring = self.ring[:, offset:offset + count]
            named_read(src, self.scene, window,
                       lambda w=window, out=ring: src.read(self.bands, window=w, out=out))
            if self.masked:
                self.ring_valid[0, offset:offset + count] = named_read(
                    src, self.scene, window, lambda w=window: src.dataset_mask(window=w)) > 0
            with self.changed:
                self.rows_read = start + count
                self.changed.notify_all()

    def _next_read_end(self, start: int) -> int | None:
        """Where the next read from row `start` ends, once it may start: whole blocks (or the
        scene's last rows), at most `read_rows`, and no row that replaces one a window still
        needs (row r replaces row r - capacity). None when the reader is closed."""
        def end() -> int:
            needed = min([self.position, *self.lent])
            stop = min(start + self.read_rows, needed + self.capacity)
            return self.src.height if stop >= self.src.height else stop - stop % self.block_rows

        with self.changed:
            self.changed.wait_for(lambda: self.closed or end() > start)
            return None if self.closed else end()


@dataclass
class WindowCounts:
    """A scene's windows, and those skipped as mostly nodata."""

    windows: int = 0
    nodata_skipped: int = 0


def window_validity(reader: WindowReader, window: Window,
                    nodata_max: float) -> tuple[bool, np.ndarray | None]:
    """(usable, mask) of one window: unusable when its nodata share exceeds `nodata_max`; the
    valid-pixel mask, or None when every pixel is valid (nothing to set to `pad_value`)."""
    valid = reader.valid(window)
    if valid is None or valid.all():
        return True, None
    return 1.0 - valid.mean() <= nodata_max, valid


def scene_windows(reader: WindowReader, params: ChipParams,
                  counts: WindowCounts) -> Iterator[tuple[Window, np.ndarray | None]]:
    """Every window of the reader's scene in row-major order, with its valid-pixel mask (None:
    all valid); windows whose nodata share exceeds `nodata_max` are skipped and counted.
    Chipping and inference both walk a scene with this, so they see the same windows."""
    width, height, size = reader.src.width, reader.src.height, params.size
    xs = window_offsets(width, size, params.overlap)
    ys = window_offsets(height, size, params.overlap)
    counts.windows = len(xs) * len(ys)
    for y0 in ys:
        for x0 in xs:
            window = Window(x0, y0, min(size, width - x0), min(size, height - y0))
            usable, valid = window_validity(reader, window, params.nodata_max)
            if not usable:
                counts.nodata_skipped += 1
                continue
            yield window, valid


def chip_pixels(pieces: list[np.ndarray], valid: np.ndarray | None, radiometry: Radiometry,
                params: ChipParams) -> np.ndarray:
    """The (bands, size, size) chip of a window whose (bands, rows, cols) pixels come in
    pieces of consecutive rows (see `WindowReader.lend`): stretched to 8 bits (or kept in the
    scene's type, `radiometry.dtype`), nodata pixels
    set to `pad_value`, padded at the scene's edge. The one piece itself when there is
    nothing to do; pieces are never changed (they may be views of the reader's ring, whose
    rows other chips share)."""
    bands, _, cols = pieces[0].shape
    rows, size = sum(piece.shape[1] for piece in pieces), params.size
    if (len(pieces) == 1 and radiometry.scale is None and valid is None
            and (rows, cols) == (size, size)):
        return pieces[0]
    dtype = radiometry.dtype
    chip = (np.empty((bands, size, size), dtype) if (rows, cols) == (size, size)
            else np.full((bands, size, size), params.pad_value, dtype))
    top = 0
    for piece in pieces:
        inside = chip[:, top:top + piece.shape[1], :cols]
        if radiometry.scale is None:
            inside[...] = piece
        else:
            radiometry.to_8bit(piece, out=inside)
        top += piece.shape[1]
    if valid is not None:
        chip[:, :rows, :cols][:, ~valid] = params.pad_value
    return chip
