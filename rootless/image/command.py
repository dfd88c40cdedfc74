"""`rbox image import|pull|ls|inspect|rm`.

Runs in: parent. An import copies the source's layers into a staging directory of the
store, unpacks them there in the unpacking sandbox (store.py), writes image.json beside
the tree and only then renames the whole to the image's name, under the name's lock.
Its layers then join the blob cache (blobs.py), where a pull (pull.py) finds them.
`rm` removes the blobs no image uses any more.
"""

from __future__ import annotations

import os
import time

from rootless import log
from rootless.errors import RboxError, SpecError
from rootless.image import store
from rootless.image.store import Store

SUBCOMMANDS = {"import": (2, 2), "pull": (1, 2), "ls": (0, 0), "inspect": (1, 1), "rm": (1, 1), "export": (2, 2)}
USAGE = ("rbox image import SOURCE NAME | pull REF [NAME] | ls [--json] | inspect NAME [--json] | rm NAME | "
         "export NAME FILE [--force]")


def run(args: list[str], values: dict[str, object], environ: dict[str, str]) -> int:
    from rootless import options

    if not args:
        raise SpecError("`rbox image` needs a subcommand", hint=f"usage: {USAGE}")
    sub, rest = args[0], args[1:]
    if sub not in SUBCOMMANDS:
        raise SpecError(f"unknown subcommand `rbox image {sub}`", hint=f"usage: {USAGE}")
    words = _options(rest, values)
    if values.get("debug"):
        log.enable_debug()
    if values.get("help"):
        log.out(options.help_text("image"))
        return 0
    least, most = SUBCOMMANDS[sub]
    if not least <= len(words) <= most:
        wanted = str(least) if least == most else f"{least} or {most}"
        raise SpecError(f"`rbox image {sub}` takes {wanted} argument(s), not {len(words)}",
                        hint=f"usage: {USAGE}")
    as_json = bool(values.get("json"))
    if sub == "pull":
        from rootless.image import registry

        registry.parse_ref(words[0])        # a bad reference is refused before the store is made
    the_store = Store.open(environ)
    if sub == "import":
        do_import(the_store, words[0], words[1], bool(values.get("quiet")))
    elif sub == "pull":
        from rootless.image import pull

        pull.run(the_store, words[0], words[1] if len(words) > 1 else None, values, environ)
    elif sub == "ls":
        listing(the_store, as_json)
    elif sub == "inspect":
        inspect(the_store, words[0], as_json)
    elif sub == "export":
        from rootless.image import export

        log.out(export.export(the_store, words[0], load(the_store, words[0]), words[1], bool(values.get("force")))
                + "\n")
    else:
        remove(the_store, words[0])
    return 0


def _options(rest: list[str], values: dict[str, object]) -> list[str]:
    """The words of `rest`; its options (which may come after the subcommand and its
    arguments, with their values as the next word or after `=`) go into `values`."""
    from rootless import options

    table = options.options_for("image")
    by_name = {name: opt for opt in table for name in opt.names}
    words: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--":
            return words + rest[i + 1:]
        if word.startswith("-") and word != "-":
            chunk = [word]
            opt = by_name.get(word)
            if opt is not None and opt.takes_value and i + 1 < len(rest):
                chunk.append(rest[i + 1])
                i += 1
            options._parse_options(chunk, table, values, "image")
        else:
            words.append(word)
        i += 1
    return words


def do_import(the_store: Store, source: str, name: str, quiet: bool = False) -> None:
    import json

    from rootless.image import sources
    from rootless.image.blobs import Blobs
    from rootless.image.progress import Progress, size, wanted

    store.check_name(name)
    show = Progress(wanted(quiet))
    blobs = Blobs(the_store.path)
    lock = the_store.lock(name)
    hold = -1
    try:
        hold = blobs.using()          # no blob collection (rm) until image.json names ours
        staging = the_store.staging()
        try:
            show.phase("reading", 0)
            got = sources.read(source, staging, show.add)
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs, 0o755)
            show.phase("unpacking", len(got.layers))
            unpacked = store.unpack(got.layers, rootfs, store.keeps_owners(), show.at)
            # The layers join the blob cache (a pull of an image that shares one fetches
            # it no more); a directory's is a tar rbox made, which nothing shares.
            kept = [] if got.kind == "directory" else sorted(set(got.digests))
            for layer, digest in zip(got.layers, got.digests, strict=True):
                if digest in kept and os.path.exists(layer):
                    blobs.adopt(layer, digest)
                elif os.path.exists(layer):
                    os.unlink(layer)
            meta = {"name": name, "digest": got.digest, "kind": got.kind, "source": _shown(source),
                    "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size": unpacked,
                    "layers": got.digests, "config": got.config, "blobs": kept}
            with open(os.path.join(staging, "image.json"), "w") as f:
                json.dump(meta, f, indent=1)
            the_store.publish(staging, name)
        except BaseException:
            show.stop()
            store.remove_tree(staging)
            raise
    finally:
        if hold >= 0:
            os.close(hold)
        os.close(lock)
    show.finish(f"imported {name}: {len(got.layers)} layer{'s' if len(got.layers) != 1 else ''}, "
                f"{size(unpacked)} unpacked")
    log.out(f"{name} {got.digest}\n")


def _shown(source: str) -> str:
    if source.startswith("oci:"):
        return "oci:" + os.path.abspath(source[4:])
    return os.path.abspath(source)


def load(the_store: Store, name: str) -> dict[str, object]:
    import json

    path = os.path.join(the_store.image_dir(name), "image.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise RboxError(f"no image `{name}` in {the_store.path}", hint="`rbox image ls` lists them; "
                        "`rbox image import SOURCE NAME` makes one") from None
    assert isinstance(meta, dict)
    return meta


def names(the_store: Store) -> list[str]:
    top = os.path.join(the_store.path, "images")
    return sorted(n for n in os.listdir(top) if os.path.isfile(os.path.join(top, n, "image.json")))


def listing(the_store: Store, as_json: bool) -> None:
    import json

    images = [load(the_store, n) for n in names(the_store)]
    if as_json:
        log.out(json.dumps(images, indent=1) + "\n")
        return
    rows = [("NAME", "DIGEST", "SIZE", "LAYERS", "IMPORTED")]
    rows += [(str(m["name"]), str(m["digest"])[7:19], _size(m.get("size")), str(len(m.get("layers") or [])),  # type: ignore[arg-type]
              str(m.get("imported", ""))) for m in images]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    log.out("".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows))


def _size(value: object) -> str:
    n = float(value) if isinstance(value, int) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def inspect(the_store: Store, name: str, as_json: bool) -> None:
    import json

    meta = load(the_store, name)
    meta["rootfs"] = os.path.join(the_store.image_dir(name), "rootfs")
    if as_json:
        log.out(json.dumps(meta, indent=1) + "\n")
        return
    lines = [f"{key}: {meta[key]}" for key in ("name", "digest", "kind", "source", "platform", "imported", "rootfs")
             if key in meta]
    lines.append(f"size: {meta.get('size')} ({_size(meta.get('size'))})")
    lines.append("layers:")
    cached = meta.get("cached") or []
    assert isinstance(cached, list)
    lines += [f"  {d}" + ("  (was in the blob cache)" if d in cached else "")
              for d in meta.get("layers") or []]  # type: ignore[attr-defined]
    lines.append("config:")
    config = meta.get("config") or {}
    assert isinstance(config, dict)
    lines += [f"  {key}: {json.dumps(config[key])}" for key in store.CONFIG_KEYS if key in config]
    log.out("\n".join(lines) + "\n")


def remove(the_store: Store, name: str) -> None:
    from rootless.image.blobs import Blobs

    load(the_store, name)
    lock = the_store.lock(name)
    try:
        trash = the_store.staging()
        os.rename(the_store.image_dir(name), os.path.join(trash, "old"))
        store.remove_tree(trash)
    finally:
        os.close(lock)
    # The blobs that only this image used go (and what interrupted pulls left), unless a
    # pull or import is running: then the next `rm` does it.
    keep: set[str] = set()
    for other in names(the_store):
        try:
            meta = load(the_store, other)
        except (RboxError, OSError, ValueError):
            return              # an image we cannot read may use any blob: keep them all
        for key in ("blobs", "layers"):
            listed = meta.get(key)
            if isinstance(listed, list):
                keep.update(str(d) for d in listed)
    Blobs(the_store.path).collect(keep)
