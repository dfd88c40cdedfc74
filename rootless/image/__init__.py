"""Images: a store of unpacked root file systems, and the unpacker that fills it.

`unpack.py` runs inside an rbox sandbox (only the target writable); `store.py` runs in
the parent and starts that sandbox. `sources.py` reads what `rbox image import` is
given; `pull.py` (with `registry.py`, `client.py`) fetches from a registry; `blobs.py`
is the cache of layer blobs they share; `progress.py` draws the progress line.
`squash.py` reads SquashFS files (in that sandbox, and for their config in the parent);
`export.py` writes them with mksquashfs.
"""
