"""Images: a store of unpacked root file systems, and the unpacker that fills it.

`unpack.py` runs inside an rbox sandbox (only the target writable); `store.py` runs in
the parent and starts that sandbox. `squash.py` reads SquashFS files (in that sandbox,
and for their config in the parent); `export.py` writes them with mksquashfs.
"""
