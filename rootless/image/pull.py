"""`rbox image pull REF [NAME]`: an image from a registry into the store.

Runs in: parent; the download threads too (a pool of WORKERS, one blob each at a time);
the unpacking in the unpacking sandbox, as for `rbox image import`.

The steps, under the name's lock (two pulls of one name take turns) and a shared hold
on the blob cache (blobs.py: a concurrent `rbox image rm` collects no blob meanwhile):
1. parse REF and refuse plain http off this machine, before any connection (registry.py);
2. resolve the manifest for this host's platform;
3. when the image of that name is already this digest from this source: done;
4. fetch the config blob, then the layers in parallel, each into the blob cache,
   verified against its digest (blobs.py: what is cached is not fetched again, what a
   killed pull left is continued);
5. unpack the layers from the cache into a staging directory, write image.json, rename
   it to the name (store.py): a killed pull leaves nothing under the name.
"""

from __future__ import annotations

import json
import os
import threading
import time

from rootless import log
from rootless.errors import RboxError
from rootless.image import registry, sources, store
from rootless.image.blobs import Aborted, Blobs
from rootless.image.progress import Progress, size, wanted
from rootless.image.store import Store

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
    creds = credentials(values.get("creds"), environ)
    client = registry.Client(ref, bool(values.get("insecure")), creds)
    show = Progress(wanted(bool(values.get("quiet"))))
    blobs = Blobs(the_store.path)
    lock = the_store.lock(name)
    try:
        hold = blobs.using()
        try:
            digest = _pull(the_store, blobs, client, ref, name, show)
        except BaseException:
            show.stop()         # the error goes on a line of its own
            raise
        finally:
            os.close(hold)
    finally:
        os.close(lock)
        client.close()
    log.out(f"{name} {digest}\n")


def _pull(the_store: Store, blobs: Blobs, client: registry.Client, ref: registry.Ref, name: str,
          show: Progress) -> str:
    image = client.resolve()
    current = _current(the_store, name)
    if current.get("digest") == image.digest and current.get("source") == ref.shown:
        show.finish(f"{name} is up to date ({image.digest[:19]})")
        return image.digest
    where = f"the registry {client.where}"
    config_digest = image.config.digest
    blobs.fetch(config_digest, image.config.size, lambda at: client.blob(config_digest, at),
                lambda n, fetched: None, lambda: False, where)
    config = _config(blobs.path(config_digest))
    digests = [layer.digest for layer in image.layers]
    show.phase("pulling", len(digests), sum(layer.size for layer in image.layers))
    cached = download(client, blobs, image.layers, show, where)
    fetched, seconds = show.fetched, max(time.monotonic() - show.start, 1e-3)
    staging = the_store.staging()
    try:
        rootfs = os.path.join(staging, "rootfs")
        os.mkdir(rootfs, 0o755)
        show.phase("unpacking", len(digests))
        unpacked = store.unpack([blobs.path(d) for d in digests], rootfs, store.keeps_owners(), show.at)
        meta = {"name": name, "digest": image.digest, "kind": "registry", "source": ref.shown,
                **({"platform": image.platform} if image.platform else {}),
                "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size": unpacked,
                "layers": digests, "config": config, "blobs": [*digests, config_digest],
                "cached": [d for d, was in zip(digests, cached, strict=True) if was]}
        with open(os.path.join(staging, "image.json"), "w") as f:
            json.dump(meta, f, indent=1)
        the_store.publish(staging, name)
    except BaseException:
        store.remove_tree(staging)
        raise
    hits = sum(cached)
    show.finish(f"pulled {name}: {len(digests)} layers" + (f" ({hits} cached)" if hits else "") +
                f", {size(fetched)} in {seconds:.2f} s ({size(fetched / seconds)}/s), {size(unpacked)} unpacked")
    return image.digest


def _current(the_store: Store, name: str) -> dict[str, object]:
    try:
        with open(os.path.join(the_store.image_dir(name), "image.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _config(path: str) -> dict[str, object]:
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
    return sources._config(raw)


def download(client: registry.Client, blobs: Blobs, layers: list[registry.Desc], show: Progress,
             where: str) -> list[bool]:
    """Every layer into the cache, WORKERS at a time; for each, whether it was cached.
    The first failure stops the others at their next chunk (their partial files stay,
    for the next pull to continue)."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    failed = threading.Event()

    def one(layer: registry.Desc) -> bool:
        was = blobs.fetch(layer.digest, layer.size, lambda at: client.blob(layer.digest, at), show.add,
                          failed.is_set, where)
        show.layer_done(was)
        return was

    pool = ThreadPoolExecutor(max_workers=max(1, min(WORKERS, len(layers))), thread_name_prefix="rbox-pull")
    try:
        futures = [pool.submit(one, layer) for layer in layers]
        wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures):
            failed.set()
            wait(futures)
            errors = [e for e in (f.exception() for f in futures) if e is not None]
            raise next((e for e in errors if not isinstance(e, Aborted)), errors[0])
        return [f.result() for f in futures]
    except BaseException:
        failed.set()            # Ctrl-C: the threads stop at their next chunk
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
