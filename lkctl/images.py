"""What `--image` names, and building LinuxKit YAML into bootable images.

`--image` resolves in this order: a path (an image file, a LinuxKit `<prefix>` with `<prefix>-kernel` and
`<prefix>-initrd.img`, or a LinuxKit YAML file to build); an installed image name; a template name (rendered and
built on demand, cached by content so an unchanged rebuild is instant).

A template render lands in a directory named after its text's digest, so a VM started from one set of variables
never has its image replaced under it by a build with another (the Go tool deleted a running VM's image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lkctl import paths
from lkctl.errors import ConfigError, ImageError, LkError, StateError
from lkctl.templates import (
    KEY_VARIABLES,
    Template,
    TemplateInputs,
    TemplateMeta,
    find_template,
    list_templates,
    render_template,
    resolve_values,
    template_meta,
    template_variables,
)

if TYPE_CHECKING:
    from lkctl.build import BuildOptions, BuildResult
    from lkctl.build.receipt import BuildRequest
    from lkctl.build.spec import Spec
    from lkctl.oci.layout import Store
    from lkctl.runtime.model import BootImage

__all__ = [
    "PRIVATE_BUILD",
    "ResolvedImage",
    "StagedKeys",
    "adopt_private_build",
    "build_source",
    "build_spec_files",
    "build_template",
    "installed_dir",
    "prune_builds",
    "require_image_named",
    "resolve_image",
    "staged_vm_keys",
    "store",
    "unchanged_build",
]

log = logging.getLogger("lkctl.images")


@dataclass(frozen=True)
class ResolvedImage:
    boot: BootImage
    label: str  # what `vm.ps` shows in its IMAGE column
    built: bool = False  # True if this call (re)built it
    memory: int = 0  # MB a template asks for (`# lkctl: memory=`); 0: not said
    cpus: int = 0


def store() -> Store:
    """lkctl's OCI image store. lkctl's cache dir (and the store, when lkctl makes it) are 0700: builds in them may
    hold what a template was given."""
    from lkctl.fsutil import private_dir
    from lkctl.oci.layout import Store

    private_dir(paths.cache_dir())
    root = paths.oci_store_dir()
    if root == paths.cache_dir() / "oci" or not root.exists():
        private_dir(root)  # an existing store elsewhere (e.g. LinuxKit's ~/.linuxkit/cache) keeps its own mode
    return Store(root)


def installed_dir() -> Path:
    """Where installed images live (`lkctl.installed` owns it)."""
    from lkctl.installed import installed_root

    return installed_root()


def _ensure_base(ref: str) -> None:
    from lkctl.baseimages import ensure_base_image

    ensure_base_image(ref, store())


def _refresh_bases(spec: Spec) -> None:
    """Rebuild lkctl's own base images the spec uses if their recipe or host packages changed (a no-op in ~0.1 s
    when they are current), so a changed recipe or a kernel upgrade never boots a stale image."""
    from lkctl.baseimages import ensure_base_image, is_base_image

    st = store()
    for ref in spec.image_refs():
        if is_base_image(ref):
            ensure_base_image(ref, st)


def _kernel_initrd(prefix: Path, label: str) -> BootImage:
    """A kernel+initrd image found on disk by its LinuxKit prefix (a build's result has it typed: boot_image())."""
    kernel = Path(f"{prefix}-kernel")
    initrd = Path(f"{prefix}-initrd.img")
    cmdline_file = Path(f"{prefix}-cmdline")
    if not initrd.is_file():
        raise ImageError(f"{label}: found {kernel} but not {initrd}; a kernel+initrd image needs both")
    cmdline = cmdline_file.read_text(encoding="utf-8").strip() if cmdline_file.is_file() else ""
    from lkctl.runtime.model import BootImage, ImageFormat

    return _with_rootdisk(BootImage(ImageFormat.KERNEL_INITRD, prefix, kernel=kernel, initrd=initrd, cmdline=cmdline))


def _with_rootdisk(boot: BootImage) -> BootImage:
    """`boot` with the persistent root disk beside its kernel (the dev image, see lkctl.dev.image), if there is
    one: it is attached through a per-VM overlay."""
    for suffix, fmt in (("-root.qcow2", "qcow2"), ("-root.img", "raw")):
        if (root := Path(f"{boot.path}{suffix}")).is_file():
            return dataclasses.replace(boot, rootdisk=root.resolve(), rootdisk_format=fmt)
    return boot


def _installed_names() -> list[str]:
    root = installed_dir()
    return [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []


def _from_path(text: str) -> ResolvedImage | None:
    path = Path(text).expanduser()
    if path.suffix in (".yml", ".yaml") and path.is_file():
        result = build_spec_files([path], name=path.stem)
        return ResolvedImage(_with_rootdisk(result.boot_image()), str(path), built=not result.cached)
    if Path(f"{path}-kernel").is_file():
        return ResolvedImage(_kernel_initrd(path, text), str(path))
    if path.is_file():
        if path.name.endswith("-kernel"):
            prefix = Path(str(path)[: -len("-kernel")])
            return ResolvedImage(_kernel_initrd(prefix, text), str(prefix))
        from lkctl.runtime.disks import detect_format
        from lkctl.runtime.model import BootImage

        fmt = detect_format(path)
        if fmt is None:
            raise ImageError(f"{path}: unknown image format (expected .iso, .qcow2, .vmdk, .raw/.img or kernel+initrd)")
        return ResolvedImage(BootImage(fmt, path.resolve()), str(path))
    if "/" in text or text.startswith("."):
        raise ImageError(f"image file {text} does not exist")
    return None


def _installed(name: str) -> ResolvedImage | None:
    if not name or name.startswith(".") or "/" in name:
        return None  # .downloads, .locks and temp dirs are lkctl's bookkeeping, not images
    d = installed_dir() / name
    if not d.is_dir():
        return None
    if Path(f"{d / name}-kernel").is_file():
        return ResolvedImage(_kernel_initrd(d / name, name), name)
    from lkctl.installed import MANIFEST_NAME, read_installed

    pulled = None
    try:
        pulled = read_installed(name)
    except (ImageError, StateError) as e:
        log.debug("installed image %s: %s; looking at every file in %s", name, e, d)
    candidates = [d / f for f in pulled.files] if pulled else sorted(d.iterdir())
    from lkctl.runtime.disks import detect_format
    from lkctl.runtime.model import BootImage

    for f in candidates:
        fmt = detect_format(f) if f.is_file() and f.name != MANIFEST_NAME else None
        if fmt is not None:
            return ResolvedImage(BootImage(fmt, f), name)
    return None


def build_spec_files(files: Sequence[Path], *, name: str, out_dir: Path | None = None) -> BuildResult:
    """Build LinuxKit YAML files (merged in order) into kernel+initrd; cached by content."""
    from lkctl.build import build_image
    from lkctl.build.spec import load_spec

    spec = load_spec(list(files))
    _refresh_bases(spec)
    return build_image(
        spec,
        name=name,
        out_dir=out_dir or paths.cache_dir() / "builds" / name,
        store=store(),
        ensure_image=_ensure_base,
    )


def _render(template: Template, variables: Mapping[str, str] | TemplateInputs | None) -> str:
    return render_template(template, variables if isinstance(variables, TemplateInputs) else dict(variables or {}))


def _build_rendered(template: Template, text: str, out_dir: Path) -> BuildResult:
    from lkctl.build import build_image
    from lkctl.build.spec import parse_spec

    spec = parse_spec(text, f"template {template.name} ({template.path}, rendered)")
    _refresh_bases(spec)
    return build_image(spec, name=template.name, out_dir=out_dir, store=store(), ensure_image=_ensure_base)


def build_template(
    template: Template,
    variables: Mapping[str, str] | TemplateInputs | None = None,
    *,
    out_dir: Path | None = None,
) -> BuildResult:
    """Render `template` (with `--var` values, or values resolved from TemplateInputs) and build it.

    Cached by content: an unchanged render is not rebuilt. Without `out_dir` the output lands in lkctl's build
    cache, in a directory per rendered text.
    """
    text = _render(template, variables)
    return _build_rendered(template, text, out_dir or _render_dir(template, text))


#: renders of one template kept in the build cache (the newest; older ones go once an hour has passed)
_KEEP_RENDERS = 4


def _render_dir(template: Template, text: str) -> Path:
    return paths.cache_dir() / "builds" / f"template-{template.name}" / hashlib.sha256(text.encode()).hexdigest()[:12]


def _prune_renders(parent: Path, keep: Path) -> None:
    """Drop old renders of one template (per-VM keys make a new one per VM), never one younger than an hour:
    a VM that is starting may be about to read it."""
    try:
        dirs = sorted((d for d in parent.iterdir() if d.is_dir() and d != keep), key=lambda d: d.stat().st_mtime)
    except OSError:
        return
    now = time.time()
    for d in dirs[: max(len(dirs) - (_KEEP_RENDERS - 1), 0)]:
        with contextlib.suppress(OSError):
            if now - d.stat().st_mtime > 3600:
                shutil.rmtree(d)


PRIVATE_BUILD = "build"  # in a VM's key staging dir: a build holding its keys, adopted by the VM (adopt_private_build)


def adopt_private_build(boot: BootImage, keys_from: Path | None, vm_dir: Path) -> BootImage:
    """A build made with a VM's keys (in its private staging dir) moves into the VM's state dir, files 0600: as
    private as the keys themselves, and removed with the VM (`vm.rm`, `--rm`). Other images are left alone."""
    staged = keys_from / PRIVATE_BUILD if keys_from is not None else None
    if staged is None or not staged.is_dir():
        return boot
    dest = vm_dir / PRIVATE_BUILD
    os.replace(staged, dest)
    for root, dirs, files in os.walk(dest):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
        for f in files:
            os.chmod(os.path.join(root, f), 0o600, follow_symlinks=False)

    def moved(p: Path | None) -> Path | None:
        return dest / p.relative_to(staged) if p is not None and p.is_relative_to(staged) else p

    return dataclasses.replace(
        boot,
        path=moved(boot.path) or boot.path,
        kernel=moved(boot.kernel),
        initrd=moved(boot.initrd),
        squashfs=moved(boot.squashfs),
    )


def _private_build_dir(template: Template, variables: Mapping[str, str] | TemplateInputs | None) -> Path | None:
    """Where a template that uses this VM's own keys (`${SSH_HOST_KEY}` is a private key) is built: the VM's
    private staging dir, never the shared build cache; None for every other template."""
    if not isinstance(variables, TemplateInputs) or variables.private_builds is None:
        return None
    if not set(KEY_VARIABLES) & set(template_variables(template).names):
        return None
    from lkctl.fsutil import private_dir

    return private_dir(variables.private_builds())


def _from_template(template: Template, variables: Mapping[str, str] | TemplateInputs | None) -> ResolvedImage:
    text = _render(template, variables)
    meta: TemplateMeta = template_meta(text, f"template {template.name} ({template.path})")
    private = _private_build_dir(template, variables)
    out_dir = private or _render_dir(template, text)
    result = _build_rendered(template, text, out_dir)
    if private is None:
        _prune_renders(out_dir.parent, out_dir)
    boot = _with_rootdisk(result.boot_image())
    return ResolvedImage(boot, template.name, built=not result.cached, memory=meta.memory, cpus=meta.cpus)


def require_image_named(text: str) -> None:
    """ImageError unless `--image` names something."""
    if not text:
        raise ImageError("no image given: use --image NAME (a template such as minimal, an installed image or a file)")


def resolve_image(text: str, variables: Mapping[str, str] | TemplateInputs | None = None) -> ResolvedImage:
    """What `--image TEXT` means: a path, then an installed image, then a template (built on demand).

    `variables`: `--var` values, or TemplateInputs (config, environment, the VM's keys, extra template dirs).
    """
    require_image_named(text)
    from_path = _from_path(text)
    if from_path is not None:
        return from_path
    installed = _installed(text)
    if installed is not None:
        return installed
    inputs = variables if isinstance(variables, TemplateInputs) else TemplateInputs(variables=dict(variables or {}))
    template = find_template(text, inputs.cwd, inputs.extra_dirs)
    if template is not None:
        return _from_template(template, inputs)
    templates = list_templates(inputs.cwd, inputs.extra_dirs)
    known = sorted({t.name for t in templates} | set(_installed_names()))
    close = difflib.get_close_matches(text, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ImageError(
        f"unknown image {text!r}{hint}: not a file, an installed image or a template "
        f"(available: {', '.join(known) or 'none'})"
    )


@dataclass
class StagedKeys:
    """A VM's SSH keys made before the VM exists, so a template can be rendered with them (`SSH_KEY`,
    `SSH_HOST_KEY`, `SSH_HOST_KEY_PUB`); `vm.run` passes `directory` on (run_vm's keys_from) and the new VM
    adopts them. Made on first use: templates that do not ask for a key cost nothing, not even a directory."""

    root: Path
    made: bool = field(default=False)
    _directory: Path | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        """The private staging dir, named after this process so a later command reclaims it if we are killed."""
        if self._directory is None:
            from lkctl.fsutil import private_dir
            from lkctl.leftovers import owned_tempdir, reclaim

            private_dir(self.root)
            reclaim(self.root, "keys-")  # what a SIGKILLed vm.run left
            self._directory = owned_tempdir(self.root, "keys-")
        return self._directory

    def variables(self) -> dict[str, str]:
        from lkctl import ssh

        keys = ssh.generate_keys(self.directory)
        self.made = True

        def public(path: Path) -> str:  # "ssh-ed25519 AAAA...": the comment names a staging dir, not the VM
            return " ".join(path.read_text(encoding="utf-8").split()[:2])

        return {
            "SSH_KEY": public(keys.client_pub),
            "SSH_HOST_KEY": keys.host_key.read_text(),
            "SSH_HOST_KEY_PUB": public(keys.host_pub),
        }


@contextlib.contextmanager
def staged_vm_keys() -> Iterator[StagedKeys]:
    """StagedKeys in `state/staging`, removed on exit (the VM has its own copy by then)."""
    keys = StagedKeys(paths.state_dir() / "staging")
    try:
        yield keys
    finally:
        if keys._directory is not None:
            shutil.rmtree(keys._directory, ignore_errors=True)


def prune_builds() -> list[Path]:
    """`image.prune`: remove build outputs and template renders in lkctl's cache that no VM boots from, and what
    killed builds left (staging dirs, temp parts), skipping builds in progress. They are rebuilt on demand."""
    from lkctl.build import prune_builds as prune
    from lkctl.runtime.state import all_records

    return prune(vm_argvs=[r.argv for r in all_records()])


def build_source(
    source: str,
    files: Sequence[Path] = (),
    *,
    variables: Mapping[str, str] | TemplateInputs | None = None,
    name: str = "",
    out_dir: Path | None = None,
    options: BuildOptions | None = None,
) -> BuildResult:
    """Build a template name or LinuxKit YAML files (`source` first, then `files`, merged like `linuxkit build
    a.yml b.yml`) with `options` (formats, size, arch, pull, ...). `variables`: `--var` values, or TemplateInputs
    (config, extra template dirs) as `vm.run --image` takes them; a `--var` the template does not use is an error.

    With default options this is exactly what `--image` builds (same cache directory, so a later
    `vm.run --image` finds it). Otherwise the output goes to `out_dir` (default: lkctl's build cache, by name);
    lkctl's base images are made or refreshed first, as `--image` does. An unchanged build is answered from the
    build's receipt (`lkctl.build.receipt`) before anything is parsed; it returns what the full path would."""
    from lkctl.build.receipt import check_receipt, snapshot_inputs, write_receipt

    request, template, paths_in = _build_request(source, files, variables, name, out_dir, options)
    cached = check_receipt(request)
    if cached is not None:
        return cached
    before = snapshot_inputs(request)
    result = _build_source(template, paths_in, request.variables, name, out_dir, request.options)
    write_receipt(request, result, before)
    return result


def unchanged_build(source: str) -> BuildResult | None:
    """What `build_source(source)` returns when its receipt answers (an unchanged build), else None: nothing is
    built, parsed or reported; an input that is wrong (an unknown template, a missing file) is None too, so the
    caller's full path says it in its own words. The `lkctl image.build SOURCE` lean path (lkctl.fastbuild)."""
    from lkctl.build.receipt import check_receipt

    try:
        request, _, _ = _build_request(source, (), None, "", None, None)
    except LkError:
        return None
    return check_receipt(request)


def _build_request(
    source: str,
    files: Sequence[Path],
    variables: Mapping[str, str] | TemplateInputs | None,
    name: str,
    out_dir: Path | None,
    options: BuildOptions | None,
) -> tuple[BuildRequest, Template | None, list[Path]]:
    """build_source's request (what its receipt is kept under, with the template's variable values resolved),
    the template `source` names (None for YAML files) and the YAML files to merge; an ImageError for a source
    that is neither, a ConfigError for a `--var` nothing uses."""
    from lkctl.build import BuildOptions
    from lkctl.build.receipt import BuildRequest
    from lkctl.fsutil import unmakeable_dir

    if out_dir is not None and (why := unmakeable_dir(out_dir)):
        raise ConfigError(f"--out {out_dir}: {why}")
    inputs = variables if isinstance(variables, TemplateInputs) else TemplateInputs(variables=dict(variables or {}))
    yml = Path(source).suffix in (".yml", ".yaml")
    template = None if yml else find_template(source, inputs.cwd, inputs.extra_dirs)
    paths_in = [] if template is not None and not files else [Path(source), *files]
    for p in paths_in:
        if not p.is_file():
            raise ImageError(f"{p} is neither a template nor a LinuxKit YAML file")
    if paths_in and inputs.variables:
        raise ConfigError(f"{source} is LinuxKit YAML, not a template: --var {next(iter(inputs.variables))} has "
                          "nothing to fill")  # fmt: skip
    values: dict[str, str] = {}  # nothing to resolve (the lean path's case) → no need to read the template yet
    if not paths_in and (inputs.variables or inputs.config or inputs.environ is not None):
        values = resolve_values(template, inputs) if template is not None else {}
    request = BuildRequest(
        source, None if paths_in else template.path if template else None, tuple(paths_in),
        values, name, out_dir, options or BuildOptions(),
    )  # fmt: skip
    return request, template, paths_in


def _build_source(
    template: Template | None,
    paths_in: list[Path],
    variables: Mapping[str, str] | None,
    name: str,
    out_dir: Path | None,
    options: BuildOptions,
) -> BuildResult:
    from lkctl.baseimages import ensure_base_image, is_base_image
    from lkctl.build import BuildOptions, build_image, check_request
    from lkctl.build.spec import load_spec, parse_spec

    # a template under another --name takes the general path below: build_template names outputs after the template
    if options == BuildOptions() and (paths_in or template is None or name in ("", template.name)):
        if paths_in:
            return build_spec_files(paths_in, name=name or paths_in[-1].stem, out_dir=out_dir)
        assert template is not None
        return build_template(template, dict(variables or {}), out_dir=out_dir)
    if template is not None and not paths_in:
        spec = parse_spec(render_template(template, dict(variables or {})), str(template.path))
        name = name or template.name
    else:
        spec = load_spec(paths_in)
        name = name or paths_in[-1].stem
    check_request(list(options.formats), name, options.pull)
    oci_store = store()
    for ref in spec.image_refs():
        if is_base_image(ref):
            ensure_base_image(ref, oci_store)  # a no-op unless the host's packages changed
    return build_image(
        spec, name=name, out_dir=out_dir or paths.cache_dir() / "builds" / name, store=oci_store,
        formats=options.formats, arch=options.arch, level=options.level, threads=options.threads, size=options.size,
        decompress_kernel=options.decompress_kernel, pull=options.pull,
    )  # fmt: skip
