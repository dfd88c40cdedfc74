"""`rbox image import|ls|inspect|rm`.

Runs in: parent. An import copies the source's layers into a staging directory of the
store, unpacks them there in the unpacking sandbox (store.py), writes image.json beside
the tree and only then renames the whole to the image's name, under the name's lock.
"""

from __future__ import annotations

import json
import os
import time

from rootless import log
from rootless.errors import RboxError, SpecError
from rootless.image import sources, store
from rootless.image.store import Store

SUBCOMMANDS = {"import": 2, "ls": 0, "inspect": 1, "rm": 1, "export": 2}
USAGE = "rbox image import SOURCE NAME | ls [--json] | inspect NAME [--json] | rm NAME | export NAME FILE [--force]"


def run(args: list[str], values: dict[str, object], environ: dict[str, str]) -> int:
    from rootless import options

    if not args:
        raise SpecError("`rbox image` needs a subcommand", hint=f"usage: {USAGE}")
    sub, rest = args[0], args[1:]
    if sub not in SUBCOMMANDS:
        raise SpecError(f"unknown subcommand `rbox image {sub}`", hint=f"usage: {USAGE}")
    words = []
    for word in rest:           # options may come after the subcommand and its arguments
        if word.startswith("-") and word != "-":
            options._parse_options([word], options.options_for("image"), values, "image")
        else:
            words.append(word)
    if values.get("help"):
        log.out(options.help_text("image"))
        return 0
    if len(words) != SUBCOMMANDS[sub]:
        raise SpecError(f"`rbox image {sub}` takes {SUBCOMMANDS[sub]} argument(s), not {len(words)}",
                        hint=f"usage: {USAGE}")
    as_json = bool(values.get("json"))
    the_store = Store.open(environ)
    if sub == "import":
        do_import(the_store, words[0], words[1])
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


def do_import(the_store: Store, source: str, name: str) -> None:
    store.check_name(name)
    lock = the_store.lock(name)
    try:
        staging = the_store.staging()
        try:
            got = sources.read(source, staging)
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs, 0o755)
            size = store.unpack(got.layers, rootfs, store.keeps_owners())
            for layer in got.layers:
                os.unlink(layer)
            meta = {"name": name, "digest": got.digest, "kind": got.kind, "source": _shown(source),
                    "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size": size,
                    "layers": got.digests, "config": got.config}
            with open(os.path.join(staging, "image.json"), "w") as f:
                json.dump(meta, f, indent=1)
            the_store.publish(staging, name)
        except BaseException:
            store.remove_tree(staging)
            raise
    finally:
        os.close(lock)
    log.out(f"{name} {got.digest}\n")


def _shown(source: str) -> str:
    if source.startswith("oci:"):
        return "oci:" + os.path.abspath(source[4:])
    return os.path.abspath(source)


def load(the_store: Store, name: str) -> dict[str, object]:
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
    meta = load(the_store, name)
    meta["rootfs"] = os.path.join(the_store.image_dir(name), "rootfs")
    if as_json:
        log.out(json.dumps(meta, indent=1) + "\n")
        return
    lines = [f"{key}: {meta[key]}" for key in ("name", "digest", "kind", "source", "imported", "rootfs")]
    lines.append(f"size: {meta.get('size')} ({_size(meta.get('size'))})")
    lines.append("layers:")
    lines += [f"  {d}" for d in meta.get("layers") or []]  # type: ignore[attr-defined]
    lines.append("config:")
    config = meta.get("config") or {}
    assert isinstance(config, dict)
    lines += [f"  {key}: {json.dumps(config[key])}" for key in sources.CONFIG_KEYS if key in config]
    log.out("\n".join(lines) + "\n")


def remove(the_store: Store, name: str) -> None:
    load(the_store, name)
    lock = the_store.lock(name)
    try:
        trash = the_store.staging()
        os.rename(the_store.image_dir(name), os.path.join(trash, "old"))
        store.remove_tree(trash)
    finally:
        os.close(lock)
