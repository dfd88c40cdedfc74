"""Images: a store of unpacked root file systems, and the unpacker that fills it.

`unpack.py` runs inside an rbox sandbox (only the target writable); `store.py` runs in
the parent and starts that sandbox.
"""
