"""`rbox image pull REF [NAME]`: an image from a registry into the store.

Runs in: parent; the download threads too (WORKERS, one blob each at a time); the
unpacking in the unpacking sandbox, as for `rbox image import`.

The steps, under the name's lock (two pulls of one name take turns) and a shared hold
on the blob cache (blobs.py: a concurrent `rbox image rm` collects no blob meanwhile):
1. parse REF and refuse plain http off this machine, before anything (registry.py);
2. start the unpacking sandbox on a staging directory (store.Unpacking): it gets ready
   while the rest happens, and it forks, which must come before any thread exists;
3. resolve the manifest for this host's platform (client.py, imported only now);
4. when the image of that name is already this digest from this source: done;
5. fetch the config blob, then the layers in parallel, each into the blob cache,
   verified against its digest (blobs.py: what is cached is not fetched again, what a
   killed pull left is continued); each layer goes to the unpacker as soon as it and
   those below it are in the cache;
6. write image.json beside the tree, rename the staging directory to the name
   (store.py): a killed pull leaves nothing under the name.
"""

from __future__ import annotations

import os
import threading
import time

from rootless import log
from rootless.errors import RboxError
from rootless.image import registry, store
from rootless.image.blobs import Aborted, Blobs
from rootless.image.progress import Progress, size, wanted
from rootless.image.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from io import BufferedIOBase

    from rootless.image.client import Client

WORKERS = 4


def credentials(given: object, environ: dict[str, str]) -> tuple[str, str] | None:
    """--creds USER[:PASS]; without PASS, $RBOX_REGISTRY_PASSWORD, else a prompt on the
    terminal (a password in the command line is visible to every user in ps)."""
    if given is None:
        return None
    user, sep, password = str(given).partition(":")
    if not user:
        raise RboxError("--creds needs a user name", hint="write --creds USER (or USER:PASSWORD)")
    if not sep:
        password = environ.get("RBOX_REGISTRY_PASSWORD", "")
        if not password:
            try:
                tty = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
            except OSError:
                raise RboxError(f"no password for --creds {user}",
                                hint="set RBOX_REGISTRY_PASSWORD, or run on a terminal to be asked") from None
            os.close(tty)
            import getpass

            password = getpass.getpass(f"password for {user}: ")
    return user, password


def run(the_store: Store, text: str, name: str | None, values: dict[str, object], environ: dict[str, str]) -> None:
    ref = registry.parse_ref(text)
    name = store.check_name(name if name is not None else registry.default_name(ref))
    insecure = bool(values.get("insecure"))
    registry.origin(ref, insecure)          # plain http off this machine: refused before anything starts
    creds = credentials(values.get("creds"), environ)
    show = Progress(wanted(bool(values.get("quiet"))))
    blobs = Blobs(the_store.path)
    lock = the_store.lock(name)
    try:
        hold = blobs.using()
        try:
            digest = _pull(the_store, blobs, ref, name, insecure, creds, show)
        except BaseException:
            show.stop()         # the error goes on a line of its own
            raise
        finally:
            os.close(hold)
    finally:
        os.close(lock)
    log.out(f"{name} {digest}\n")


def _pull(the_store: Store, blobs: Blobs, ref: registry.Ref, name: str, insecure: bool,
          creds: tuple[str, str] | None, show: Progress) -> str:
    staging = the_store.staging()
    rootfs = os.path.join(staging, "rootfs")
    unpacked_so_far = [0, 0]

    def unpacking_progress(layer: int, nbytes: int) -> None:
        unpacked_so_far[:] = [layer if layer >= 0 else unpacked_so_far[0], nbytes]
        if show.verb == "unpacking":
            show.at(layer, nbytes)

    try:
        os.mkdir(rootfs, 0o755)
        unpacking = store.Unpacking(rootfs, store.keeps_owners(), unpacking_progress)
    except BaseException:
        store.remove_tree(staging)
        raise
    client = None
    try:
        from rootless.image.client import Client

        client = Client(ref, insecure, creds)
        image = client.resolve()
        current = _current(the_store, name)
        if current.get("digest") == image.digest and current.get("source") == ref.shown:
            unpacking.abort()
            _remove(staging)
            show.finish(f"{name} is up to date ({image.digest[:19]})")
            return image.digest
        where = f"the registry {client.where}"
        config_digest = image.config.digest
        blobs.fetch(config_digest, image.config.size, _opener(client, config_digest),
                    lambda n, fetched: None, lambda: False, where)
        config = _config(blobs.path(config_digest))
        digests = [layer.digest for layer in image.layers]
        show.phase("pulling", len(digests), sum(layer.size for layer in image.layers))
        cached = download(client, blobs, image.layers, show, where, lambda i: unpacking.feed(blobs.path(digests[i])))
        fetched, seconds = show.fetched, max(time.monotonic() - show.start, 1e-3)
        show.phase("unpacking", len(digests))
        show.at(*unpacked_so_far)
        unpacked = unpacking.finish()
        meta = {"name": name, "digest": image.digest, "kind": "registry", "source": ref.shown,
                **({"platform": image.platform} if image.platform else {}),
                "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size": unpacked,
                "layers": digests, "config": config, "blobs": [*digests, config_digest],
                "cached": [d for d, was in zip(digests, cached, strict=True) if was]}
        import json

        with open(os.path.join(staging, "image.json"), "w") as f:
            json.dump(meta, f, indent=1)
        the_store.publish(staging, name)
    except BaseException:
        unpacking.abort()
        _remove(staging)
        raise
    finally:
        if client is not None:
            client.close()
    hits = sum(cached)
    show.finish(f"pulled {name}: {len(digests)} layers" + (f" ({hits} cached)" if hits else "") +
                f", {size(fetched)} in {seconds:.2f} s ({size(fetched / seconds)}/s), {size(unpacked)} unpacked")
    return image.digest


def _opener(client: Client, digest: str) -> Callable[[int], tuple[int, BufferedIOBase]]:
    return lambda at: client.blob(digest, at)


def _remove(staging: str) -> None:
    """The staging directory of a pull that stopped: at once when nothing was unpacked
    there, else in a user namespace (store.remove_tree: files of subordinate ids)."""
    try:
        os.rmdir(os.path.join(staging, "rootfs"))
        os.rmdir(staging)
    except OSError:
        store.remove_tree(staging)


def _current(the_store: Store, name: str) -> dict[str, object]:
    import json

    try:
        with open(os.path.join(the_store.image_dir(name), "image.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _config(path: str) -> dict[str, object]:
    import json

    with open(path, "rb") as f:
        data = f.read(16 << 20)
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise RboxError(f"the image's config is not valid JSON ({e})",
                        hint="the image on the registry is damaged; push it again") from None
    if not isinstance(raw, dict):
        raise RboxError("the image's config is not a JSON object",
                        hint="the image on the registry is damaged; push it again")
    return store.image_config(raw)


def download(client: Client, blobs: Blobs, layers: list[registry.Desc], show: Progress, where: str,
             ready: Callable[[int], None]) -> list[bool]:
    """Every layer into the cache, WORKERS threads at a time; for each, whether it was
    cached. `ready(i)` is called (in this thread, in order) as soon as layers 0..i are
    all in the cache. The first failure stops the others at their next chunk (their
    partial files stay, for the next pull to continue) and is raised."""
    failed = threading.Event()
    done = [threading.Event() for _ in layers]
    results: list[bool | BaseException] = [False] * len(layers)
    todo = list(range(len(layers)))
    lock = threading.Lock()

    def worker() -> None:
        while not failed.is_set():
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            layer = layers[i]
            try:
                results[i] = blobs.fetch(layer.digest, layer.size, _opener(client, layer.digest), show.add,
                                         failed.is_set, where)
                show.layer_done(bool(results[i]))
            except BaseException as e:  # noqa: BLE001 - handed to the main thread, raised there
                results[i] = e
                failed.set()
            finally:
                done[i].set()

    threads = [threading.Thread(target=worker, name=f"rbox-pull-{n}", daemon=True)
               for n in range(max(1, min(WORKERS, len(layers))))]
    for thread in threads:
        thread.start()
    try:
        for i in range(len(layers)):
            while not done[i].wait(0.2) and not failed.is_set():
                pass
            if failed.is_set():
                # The failing thread put its error in `results` before it said so. The
                # others are not waited for (one may wait out a stalled connection):
                # they stop at their next chunk, or end with the process.
                errors = [r for r in results if isinstance(r, BaseException)]
                raise next((e for e in errors if not isinstance(e, Aborted)), errors[0])
            ready(i)
    except BaseException:
        failed.set()            # Ctrl-C, or a failure above: the threads stop at their next chunk
        raise
    for thread in threads:
        thread.join()
    return [bool(r) for r in results]
