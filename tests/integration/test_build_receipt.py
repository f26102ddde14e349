"""Build receipts (lkctl.build.receipt): an unchanged `build_source` is answered from the receipt, and a change to
any input the receipt covers makes the next build take the full path and produce the right outputs.

Real builds of synthetic images in the test's own image store, real files; "the right outputs" means the same
bytes as a build of the same inputs into a fresh output directory, which no receipt can answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lkctl import paths
from lkctl.build import BuildOptions, BuildResult
from lkctl.build.receipt import BuildRequest, receipt_path, snapshot_inputs, write_receipt
from lkctl.build.testing import Member, add_image, directory, file
from lkctl.errors import LkError
from lkctl.images import build_source
from lkctl.oci.layout import Store

pytestmark = pytest.mark.integration

YML = """\
kernel:
  image: lkctl.test/kernel:1
  cmdline: console=ttyS0
init:
  - lkctl.test/init:1
files:
  - path: etc/motd
    source: motd.txt
  - path: etc/extra
    source: extra.txt
    optional: true
"""
EXTRA_YML = "files:\n  - path: etc/issue\n    contents: hello\n"
TEMPLATE = "kernel:\n  image: lkctl.test/kernel:1\n  cmdline: ${CMDLINE:-console=ttyS0}\ninit:\n  - lkctl.test/init:1\n"


def _init_layers(text: bytes) -> list[list[Member]]:
    return [[directory("bin"), file("bin/sh", b"#!busybox\n", 0o755), file("etc/version", text)]]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project dir (the cwd) with vm.yml, extra.yml and motd.txt; the test's store holds the images."""
    # a receipt covers every sys.path directory by identity (a library installed there changes what lkctl runs).
    # Under pytest that holds the repository's root, which the suite's other worker may add a file to mid-build,
    # and under xdist '' (the cwd: this project, which the tests edit): then (rightly) no receipt, and the tests
    # that expect one would fail by chance. The CLI's sys.path has neither (its first entry is the script's dir).
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setattr(sys, "path", [e for e in sys.path if e not in ("", ".") and Path(e).resolve() != root])
    store = Store(paths.oci_store_dir()).ensure()
    add_image(store, "lkctl.test/kernel:1", [[file("kernel", b"MZ kernel " * 64), file("kernel.tar", b"")]])
    add_image(store, "lkctl.test/init:1", _init_layers(b"1\n"))
    proj = tmp_path / "proj"
    (proj / ".git").mkdir(parents=True)
    (proj / "vm.yml").write_text(YML)
    (proj / "extra.yml").write_text(EXTRA_YML)
    (proj / "motd.txt").write_text("welcome\n")
    monkeypatch.chdir(proj)
    return proj


def build(*files: str, **kwargs: object) -> BuildResult:
    source, *more = files or ("vm.yml",)
    return build_source(source, [Path(f) for f in more], **kwargs)  # type: ignore[arg-type]


def reference(tmp_path: Path, *files: str, **kwargs: object) -> BuildResult:
    """The same build into a fresh output directory: a request no receipt can answer."""
    out = tmp_path / f"reference-{len(list(tmp_path.glob('reference-*')))}"
    return build(*files, out_dir=out, **kwargs)


def same_outputs(a: BuildResult, b: BuildResult) -> None:
    assert a.outputs.keys() == b.outputs.keys()
    for f in a.outputs:
        for pa, pb in zip(a.outputs[f], b.outputs[f], strict=True):
            assert pa.read_bytes() == pb.read_bytes(), f"{pa} differs from {pb}"


def answered(*files: str, **kwargs: object) -> BuildResult:
    """A build that must come from the receipt."""
    result = build(*files, **kwargs)
    assert result.receipt and result.cached and result.built == ()
    return result


def test_an_unchanged_build_is_answered_from_its_receipt_as_the_full_path_would_answer(project: Path) -> None:
    first = build()
    assert not first.cached and not first.receipt and first.built == ("kernel+initrd",)
    second = answered()
    for path in receipt_path_of("vm.yml").parent.iterdir():
        assert path.suffix == ".json"  # written by rename: no temp file left behind
    receipt_path_of("vm.yml").unlink()
    full = build()  # the full path, cached
    assert full.cached and not full.receipt
    assert second == replace(full, receipt=True)
    assert second.kernel == first.kernel and second.key == first.key and second.cmdline_text == "console=ttyS0"


def receipt_path_of(source: str, *files: str, **kwargs: object) -> Path:
    """Where build_source keeps the receipt of a YAML build (the request as build_source makes it)."""
    paths_in = (Path(source), *(Path(f) for f in files))
    request = BuildRequest(source, None, paths_in, {}, str(kwargs.get("name", "")), None, BuildOptions())
    return receipt_path(request)


def test_receipts_are_private_files_in_a_private_dir(project: Path) -> None:
    build()
    path = receipt_path_of("vm.yml")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert json.loads(path.read_text())["version"] == 1


def _touch_ctime(path: Path) -> None:
    """Change only `path`'s ctime: same bytes, same mtime (what a `cp -p` over it or a chmod back would do)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _edit_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace_by_rename(path: Path) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


def _retag_init(project: Path) -> None:
    add_image(Store(paths.oci_store_dir()), "lkctl.test/init:1", _init_layers(b"2\n"))


def _add_unrelated_image(project: Path) -> None:
    add_image(Store(paths.oci_store_dir()), "lkctl.test/other:1", [[file("x", b"x")]])


CHANGES: dict[str, Callable[[Path], object]] = {
    "the YAML's text": lambda p: (p / "vm.yml").write_text(YML.replace("console=ttyS0", "console=ttyS1")),
    "a file source's bytes, same size and mtime": lambda p: _edit_keeping_size_and_mtime(p / "motd.txt", b"WELCOME\n"),
    "a file source replaced by rename, same bytes": lambda p: _replace_by_rename(p / "motd.txt"),
    "a file source's ctime only": lambda p: _touch_ctime(p / "motd.txt"),
    "a missing optional file source appearing": lambda p: (p / "extra.txt").write_text("extra\n"),
    "an image re-tagged in the store": _retag_init,
    "another image added to the store": _add_unrelated_image,
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_changed_input_is_never_answered_from_the_receipt(change: str, project: Path, tmp_path: Path) -> None:
    build()
    answered()
    CHANGES[change](project)
    time.sleep(0.03)  # older than two coarse clock ticks, or the full path (fast when cached) rightly writes none
    after = build()
    assert not after.receipt
    same_outputs(after, reference(tmp_path))
    answered()  # the full path wrote a new receipt for what is there now


def test_a_yaml_rewritten_with_the_same_bytes_is_still_answered(project: Path) -> None:
    build()
    (project / "vm.yml").write_text(YML)  # new mtime, same bytes: templates and YAML are compared by sha256
    answered()


def test_a_merged_file_that_changes_is_not_answered(project: Path, tmp_path: Path) -> None:
    build("vm.yml", "extra.yml")
    answered("vm.yml", "extra.yml")
    (project / "extra.yml").write_text(EXTRA_YML.replace("hello", "bye"))
    after = build("vm.yml", "extra.yml")
    assert not after.receipt and after.built == ("kernel+initrd",)
    same_outputs(after, reference(tmp_path, "vm.yml", "extra.yml"))


def test_the_working_directory_is_part_of_the_request(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build()
    other = tmp_path / "other"
    shutil.copytree(project, other)
    (other / "motd.txt").write_text("elsewhere\n")  # the same relative names mean other files here
    monkeypatch.chdir(other)
    after = build()
    assert not after.receipt
    same_outputs(after, reference(tmp_path))


def test_the_environment_lkctl_reads_is_part_of_the_request(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build()
    monkeypatch.setenv("PATH", os.environ["PATH"] + os.pathsep + "/nonexistent")  # programs resolve elsewhere
    assert not build().receipt
    answered()


def test_a_change_to_lkctls_code_invalidates_every_receipt(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the receipt's view of lkctl's package is pointed at a copy, so touching it here cannot cost a build that runs
    # meanwhile in another test process its receipt
    import lkctl.build.receipt as module

    package = tmp_path / "lkctl"
    shutil.copytree(Path(module.__file__).parent.parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(module, "_PACKAGE", package)
    build()
    answered()
    _touch_ctime(package / "build" / "receipt.py")
    after = build()
    assert not after.receipt and after.cached  # the builder's own cache still knows the outputs
    answered()


OPTIONS: dict[str, dict[str, object]] = {
    "formats": {"options": BuildOptions(formats=("kernel+initrd", "tar"))},
    "compression level": {"options": BuildOptions(level=1)},
    "pull policy": {"options": BuildOptions(pull="never")},
    "name": {"name": "renamed"},
}


@pytest.mark.parametrize("what", list(OPTIONS), ids=list(OPTIONS))
def test_other_options_are_another_request(what: str, project: Path, tmp_path: Path) -> None:
    build()
    kwargs = OPTIONS[what]
    first = build(**kwargs)
    assert not first.receipt
    same_outputs(first, reference(tmp_path, **kwargs))
    assert answered(**kwargs) == replace(first, cached=True, receipt=True, built=(), assembled="none")
    # the default request again: outputs of its own, whether another request overwrote them (--level into the same
    # directory) or only touched the stamp (a second format)
    same_outputs(build(), reference(tmp_path))


def test_an_output_deleted_or_edited_is_rebuilt(project: Path, tmp_path: Path) -> None:
    first = build()
    first.initrd.unlink()
    after = build()
    assert not after.receipt and after.built == ("kernel+initrd",)
    with open(first.kernel, "ab") as f:
        f.write(b"edited")
    after = build()
    assert not after.receipt and after.built == ("kernel+initrd",)
    same_outputs(after, reference(tmp_path))
    answered()


def test_a_lost_build_stamp_is_not_answered(project: Path) -> None:
    first = build()
    stamps = list((paths.cache_dir() / "build-state").glob("*/vm.json"))
    assert len(stamps) == 1
    stamps[0].unlink()
    after = build()
    assert not after.receipt and after.built == ("kernel+initrd",)
    assert after.initrd == first.initrd


MALFORMED: dict[str, Callable[[Path], object]] = {
    "garbage": lambda p: p.write_bytes(b"\x00not json"),
    "a list": lambda p: p.write_text("[]"),
    "another version": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "version": 99})),
    "missing facts": lambda p: p.write_text(
        json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "stamp"})
    ),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "nested too deep to parse": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
}


@pytest.mark.parametrize("damage", list(MALFORMED), ids=list(MALFORMED))
def test_a_malformed_receipt_is_ignored_and_replaced(damage: str, project: Path) -> None:
    build()
    MALFORMED[damage](receipt_path_of("vm.yml"))
    after = build()
    assert not after.receipt and after.cached
    answered()


def _outputs_elsewhere(r: dict[str, Any], project: Path) -> None:
    """The result names files outside the output dir (the project's own), with their identities."""
    from lkctl.fsutil import file_identity

    files = [str(project / n) for n in ("vm.yml", "extra.yml", "motd.txt")]
    r["result"].update(kernel=files[0], initrd=files[1], cmdline=files[2], outputs={"kernel+initrd": files})
    r["outputs"] = [file_identity(f) for f in files]


def _stamp_elsewhere(r: dict[str, Any], project: Path) -> None:
    """The stamp fact names another file (here the YAML), with its digest: deleting the real stamp goes unseen."""
    import hashlib

    r["stamp"] = [str(project / "vm.yml"), hashlib.sha256((project / "vm.yml").read_bytes()).hexdigest()]
    stamps = list((paths.cache_dir() / "build-state").glob("*/vm.json"))
    stamps[0].unlink()


HOSTILE: dict[str, Callable[[dict[str, Any], Path], object]] = {
    "no kernel+initrd among its outputs": lambda r, p: (r["result"].update(outputs={"tar": []}), r.update(outputs=[])),
    "outputs outside the output dir": _outputs_elsewhere,
    "a stamp that is not the build's": _stamp_elsewhere,
}


@pytest.mark.parametrize("hostile", list(HOSTILE), ids=list(HOSTILE))
def test_a_valid_but_inconsistent_receipt_is_ignored(
    hostile: str, project: Path, plain_env: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from lkctl.fastbuild import fast_build

    build()
    path = receipt_path_of("vm.yml")
    r = json.loads(path.read_text())
    HOSTILE[hostile](r, project)
    path.write_text(json.dumps(r))
    assert fast_build(["image.build", "vm.yml"]) is None  # the full CLI builds, and says so itself
    assert capfd.readouterr() == ("", "")
    after = build()
    assert not after.receipt and after.kernel == paths.cache_dir() / "builds" / "vm" / "vm-kernel"
    same_outputs(after, reference(tmp_path))
    answered()


def test_a_huge_receipt_is_not_read(project: Path) -> None:
    build()
    path = receipt_path_of("vm.yml")
    r = json.loads(path.read_text())
    r["padding"] = "x" * (16 << 20)  # valid, and every fact holds: only its size is wrong
    path.write_text(json.dumps(r))
    assert not build().receipt
    answered()


def test_a_foreign_receipt_is_ignored(project: Path, tmp_path: Path) -> None:
    build("vm.yml", "extra.yml")  # another request's receipt...
    shutil.copy(receipt_path_of("vm.yml", "extra.yml"), receipt_path_of("vm.yml"))  # ...where this one's belongs
    after = build()
    assert not after.receipt and after.built == ("kernel+initrd",)
    same_outputs(after, reference(tmp_path))


def test_no_receipt_when_an_input_changed_while_building(project: Path) -> None:
    request = BuildRequest("vm.yml", None, (Path("vm.yml"),))
    before = snapshot_inputs(request)
    (project / "vm.yml").write_text(YML.replace("console=ttyS0", "console=ttyS2"))  # as if edited mid-build
    result = build()  # builds (and vouches for) the new text
    assert write_receipt(request, result, before) is None  # what was read before no longer holds
    assert answered().cmdline_text == "console=ttyS2"


def test_no_receipt_when_a_source_no_longer_holds_the_bytes_the_build_hashed(project: Path) -> None:
    request = BuildRequest("vm.yml", None, (Path("vm.yml"),))
    before = snapshot_inputs(request)
    result = build()
    receipt_path_of("vm.yml").unlink()
    (project / "motd.txt").write_text("changed after hashing\n")
    assert write_receipt(request, result, before) is None
    assert not receipt_path_of("vm.yml").exists()


def test_a_deleted_image_blob_is_not_answered(project: Path) -> None:
    never = BuildOptions(pull="never")  # the full path's answer is then an error, not a pull from lkctl.test
    result = build(options=never)
    assert answered(options=never).initrd == result.initrd
    store = Store(paths.oci_store_dir())
    image = store.resolve("lkctl.test/init:1")
    store.blob_path(image.manifest["config"]["digest"]).unlink()
    with pytest.raises(LkError, match="missing from the image store"):  # what the full path says
        build(options=never)


def _templates(root: Path, name: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return root / name


def test_templates_text_variables_and_lookup(project: Path, tmp_path: Path) -> None:
    user = _templates(paths.config_dir() / "templates", "tpl.yml", TEMPLATE)
    first = build_source("tpl")
    assert first.cmdline_text == "console=ttyS0" and not first.receipt
    assert build_source("tpl").receipt
    user.write_text(TEMPLATE.replace("ttyS0", "ttyS3"))  # the template's text, its defaults included
    after = build_source("tpl")
    assert not after.receipt and after.cmdline_text == "console=ttyS3"
    with_var = build_source("tpl", variables={"CMDLINE": "quiet"})  # --var: another request
    assert not with_var.receipt and with_var.cmdline_text == "quiet"
    assert build_source("tpl", variables={"CMDLINE": "quiet"}).receipt
    _templates(project / ".lkctl" / "templates", "tpl.yml", TEMPLATE.replace("ttyS0", "hvc0"))  # shadows the user's
    shadowed = build_source("tpl")
    assert not shadowed.receipt and shadowed.cmdline_text == "console=hvc0"
    assert build_source("tpl").receipt


def test_name_names_a_templates_outputs_with_default_options_too(project: Path) -> None:
    # `image.build TEMPLATE --name X` wrote the template's own name while `--name X --format tar` wrote X
    _templates(paths.config_dir() / "templates", "tpl.yml", TEMPLATE)
    named = build_source("tpl", name="custom")
    assert named.kernel.name == "custom-kernel" and named.kernel.is_file()
    assert build_source("tpl", name="custom") == replace(named, cached=True, receipt=True, built=(), assembled="none")
    assert build_source("tpl").kernel.name == "tpl-kernel"
    assert build_source("tpl", name="custom", options=BuildOptions(level=1)).kernel.name == "custom-kernel"


def test_a_var_no_template_uses_is_an_error_not_a_silent_build(project: Path) -> None:
    # as vm.run and template.render say it: a typo must not build (or answer "unchanged" for) the defaults
    _templates(paths.config_dir() / "templates", "tpl.yml", TEMPLATE)
    build_source("tpl")
    with pytest.raises(LkError, match="template tpl has no variable CMDLNE; did you mean CMDLINE"):
        build_source("tpl", variables={"CMDLNE": "quiet"})
    with pytest.raises(LkError, match=r"vm\.yml is LinuxKit YAML, not a template: --var CMDLINE has nothing to fill"):
        build("vm.yml", variables={"CMDLINE": "quiet"})


def test_the_cli_takes_template_variables_and_dirs_from_config(project: Path, plain_env: None) -> None:
    # image.build builds what vm.run --image builds: lkctl.templates.variables and .dirs count (README, Templates)
    extra = _templates(project / "more-templates", "tpl.yml", TEMPLATE).parent
    config = f"lkctl:\n  templates:\n    dirs: {extra}\n    variables: {{CMDLINE: from-config, OTHER: unused}}\n"
    (project / "lkctl.yaml").write_text(config)

    def cmdline(*args: str) -> str:
        p = subprocess.run([*CLI, "image.build", "tpl", *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return Path(p.stdout.strip() + "-cmdline").read_text(encoding="utf-8")

    assert cmdline() == "from-config"
    assert cmdline("--var", "CMDLINE=from-flag") == "from-flag"  # --var over config
    assert cmdline() == "from-config"  # a receipt for each
    (project / "lkctl.yaml").write_text(f"lkctl:\n  templates:\n    dirs: {extra}\n")
    assert cmdline() == "console=ttyS0"  # the template's default again
    (project / "lkctl.yaml").unlink()
    p = subprocess.run([*CLI, "image.build", "tpl"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "neither a template nor a LinuxKit YAML file" in p.stderr  # the dir is gone


def test_a_template_reads_as_utf8_whatever_the_locale(project: Path, plain_env: None) -> None:
    # LinuxKit YAML is UTF-8 (spec files are read so): under an ASCII locale the full path failed to read a
    # template with an em dash while its receipt, made under UTF-8, answered "unchanged"
    _templates(project / ".lkctl" / "templates", "tpl.yml", "# tpl \u2014 caf\u00e9\n" + TEMPLATE)
    ascii_env = dict(os.environ, PYTHONUTF8="0", LC_ALL="C")
    runs = []
    for env in (ascii_env, dict(os.environ), dict(ascii_env, LKCTL_TEST_FULL_CLI="1")):  # the last: invoke's CLI
        p = subprocess.run([*CLI, "image.build", "tpl"], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        runs.append(p.stdout)
    assert runs[0] == runs[1] == runs[2]


def test_jinja_templates_never_get_a_receipt(project: Path) -> None:
    _templates(project / ".lkctl" / "templates", "j.yml.j2", TEMPLATE.replace("${CMDLINE:-console=ttyS0}", "{{ 'q' }}"))
    assert build_source("j").cmdline_text == "q"
    assert not build_source("j").receipt
    assert not (paths.cache_dir() / "build-state" / "receipts").exists()


CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'lkctl'; from lkctl.launcher import main; main()"]


@pytest.fixture
def plain_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No config the full CLI would read: a fresh HOME, no LKCTL_* variable but LKCTL_HOME, no INVOKE_* one."""
    if any(Path(f"/etc/lkctl{s}").exists() for s in (".yaml", ".yml", ".json", ".py")):
        pytest.skip("this machine has an /etc/lkctl.* config file")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for name in [n for n in os.environ if (n.startswith("LKCTL_") and n != "LKCTL_HOME") or n.startswith("INVOKE_")]:
        monkeypatch.delenv(name)


def test_the_cli_says_the_same_from_a_receipt_as_from_the_full_path(project: Path, plain_env: None) -> None:
    def run(*flags: str) -> tuple[int, str, str]:
        p = subprocess.run([sys.executable, *flags, *CLI[1:], "image.build", "vm.yml"], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        return p.returncode, p.stdout, p.stderr

    built = run()
    assert built[0] == 0 and "built kernel+initrd" in built[2]
    code, out, err = run("-X", "importtime")
    imported = [line for line in err.splitlines() if line.startswith("import time:")]
    assert imported and not any(line.endswith(" invoke") for line in imported)  # the lean path answered
    from_receipt = code, out, "".join(f"{line}\n" for line in err.splitlines() if not line.startswith("import time:"))
    shutil.rmtree(paths.cache_dir() / "build-state" / "receipts")
    full = run("-X", "importtime")
    assert any(line.endswith(" invoke") for line in full[2].splitlines())  # the full CLI answered
    full = (
        full[0],
        full[1],
        "".join(f"{line}\n" for line in full[2].splitlines() if not line.startswith("import time:")),
    )
    assert from_receipt == full
    assert full[2].startswith("lkctl: unchanged, from cache: ") and full[1] == f"{paths.cache_dir() / 'builds/vm/vm'}\n"
    assert (paths.cache_dir() / "build-state" / "receipts").is_dir()  # the full path wrote it again


def test_the_lean_path_leaves_every_doubt_to_the_full_cli(
    project: Path, plain_env: None, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from lkctl.fastbuild import fast_build

    build()
    assert fast_build(["image.build", "vm.yml"]) == 0
    out, err = capfd.readouterr()
    assert err.startswith("lkctl: unchanged, from cache: ") and out == f"{paths.cache_dir() / 'builds/vm/vm'}\n"
    assert fast_build(["image.build", "vm.yml", "--format", "tar"]) is None  # not the plain form
    assert fast_build(["image.build", "nosuch"]) is None  # the full CLI names the error
    monkeypatch.setenv("LKCTL_VM_MEMORY", "512")  # invoke would map it onto its config
    assert fast_build(["image.build", "vm.yml"]) is None
    monkeypatch.delenv("LKCTL_VM_MEMORY")
    (project / "lkctl.yaml").write_text("lkctl: {}\n")  # a project config file, even a valid one
    assert fast_build(["image.build", "vm.yml"]) is None
    (project / "lkctl.yaml").unlink()
    (project / "motd.txt").write_text("changed\n")  # no receipt answers: the full CLI builds
    assert fast_build(["image.build", "vm.yml"]) is None
    assert capfd.readouterr() == ("", "")  # and nothing was said


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lkctl's real base images (kernel, init, sshd from this machine's packages), made once for this module."""
    from lkctl.baseimages import build_all

    root = tmp_path_factory.mktemp("base-oci")
    build_all(Store(root))
    return root


def test_base_image_recipes_and_stamps_are_facts_of_the_receipt(
    base_store: Path, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LKCTL_OCI_STORE", str(base_store))
    first = build_source("minimal")  # the built-in template: lkctl.local/kernel, init and sshd
    assert build_source("minimal").receipt
    _touch_ctime(paths.resource_dir("images") / "init" / "recipe.yml")  # the recipe's files, by identity
    after = build_source("minimal")
    assert not after.receipt and after.cached and after.initrd == first.initrd
    assert build_source("minimal").receipt
    stamp = base_store / ".lkctl" / "baseimages" / "init.json"
    doc = json.loads(stamp.read_text())
    doc["host"][0][1] += 1  # as if a host file the image was made from had changed size
    stamp.write_text(json.dumps(doc))
    after = build_source("minimal")
    assert not after.receipt
    assert json.loads(stamp.read_text())["host"][0][1] == doc["host"][0][1] - 1  # the full path made init again
    same_outputs(after, build_source("minimal", out_dir=tmp_path / "fresh"))
    assert not build_source("minimal").receipt  # the store changed while the last one built: no receipt then
    assert build_source("minimal").receipt


def test_the_builtin_template_builds_under_an_ascii_locale(
    base_store: Path, project: Path, plain_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the base images' recipes are UTF-8: the full path died with a UnicodeDecodeError traceback under PYTHONUTF8=0
    # LC_ALL=C, where a receipt made under UTF-8 answered "unchanged"
    monkeypatch.setenv("LKCTL_OCI_STORE", str(base_store))
    ascii_env = dict(os.environ, PYTHONUTF8="0", LC_ALL="C", LKCTL_TEST_FULL_CLI="1")  # the full (invoke) CLI
    p = subprocess.run([*CLI, "image.build", "minimal"], env=ascii_env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip() + "-initrd.img").is_file()


def test_pull_always_is_never_answered_from_a_receipt(project: Path, tmp_path: Path) -> None:
    from lkctl.oci.pull import push_image
    from tests.integration._loopback import docker_registry

    src = Store(tmp_path / "src").ensure()
    add_image(src, "lkctl.test/init:9", _init_layers(b"9\n"))
    add_image(src, "lkctl.test/kernel:9", [[file("kernel", b"MZ kernel 9"), file("kernel.tar", b"")]])
    with docker_registry(tmp_path / "registry") as reg:
        for name in ("init", "kernel"):
            push_image(f"lkctl.test/{name}:9", src, to=f"{reg.host}/lkctl/{name}:9")
        yml = YML.replace("lkctl.test/init:1", f"{reg.host}/lkctl/init:9")
        (project / "pulled.yml").write_text(yml.replace("lkctl.test/kernel:1", f"{reg.host}/lkctl/kernel:9"))
        always = BuildOptions(pull="always")
        assert not build("pulled.yml", options=always).receipt
        assert not build("pulled.yml", options=always).receipt  # it asked the registry again
        assert not receipt_path(BuildRequest("pulled.yml", None, (Path("pulled.yml"),), options=always)).exists()
        build("pulled.yml")  # the default policy: the images are in the store now, no registry needed
    assert answered("pulled.yml").cached  # registry gone: the receipt answers, as the full path would not ask it
    with pytest.raises(LkError):
        build("pulled.yml", options=always)  # and --pull always still asks (and fails: the registry is gone)


def test_image_prune_drops_the_receipts_with_the_outputs(project: Path) -> None:
    from lkctl.images import prune_builds

    first = build()
    removed = prune_builds()  # no VM uses the build: its outputs go, and every receipt
    assert first.initrd.parent in removed and not first.initrd.exists()
    assert not (paths.cache_dir() / "build-state" / "receipts").exists()
    again = build()
    assert not again.receipt and again.built == ("kernel+initrd",)
    answered()


@pytest.mark.parametrize(
    "change",
    [
        {"options": BuildOptions(size=2 << 30)},
        {"options": BuildOptions(arch="arm64")},
        {"options": BuildOptions(decompress_kernel=True)},
        {"options": BuildOptions(threads=1)},
        {"options": BuildOptions(formats=("tar",))},
        {"options": BuildOptions(level=9)},
        {"options": BuildOptions(pull="always")},
        {"out_dir": Path("elsewhere")},
        {"name": "other"},
        {"variables": {"X": "1"}},
        {"files": (Path("vm.yml"), Path("extra.yml"))},
    ],
    ids=repr,
)
def test_every_option_is_part_of_the_request(change: dict[str, object], project: Path) -> None:
    base = BuildRequest("vm.yml", None, (Path("vm.yml"),))
    assert receipt_path(replace(base, **change)) != receipt_path(base)  # type: ignore[arg-type]


def test_a_library_directory_changing_invalidates_receipts(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libs = tmp_path / "libs"
    libs.mkdir()
    monkeypatch.syspath_prepend(str(libs))
    build()
    answered()
    (libs / "lkctl_test_lib.py").write_text("")  # a library installed there: its directory changed
    assert not build().receipt


def test_a_closed_stdout_ends_the_lean_path_as_it_ends_the_full_cli(project: Path, plain_env: None) -> None:
    def run(env: dict[str, str]) -> tuple[int, str]:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before anything is written (`lkctl image.build x | true`)
        try:
            p = subprocess.run([*CLI, "image.build", "vm.yml"], stdout=write, stderr=subprocess.PIPE, text=True,
                               env=env, timeout=120)  # fmt: skip
        finally:
            os.close(write)
        return p.returncode, p.stderr

    build()
    subprocess.run([*CLI, "image.build", "vm.yml"], check=True, capture_output=True)  # a receipt for the CLI's code
    lean = run(dict(os.environ))
    full = run(dict(os.environ, LKCTL_TEST_FULL_CLI="1"))  # an LKCTL_* variable invoke could read: the full CLI
    assert lean == full
    assert lean[0] == 141 and lean[1].startswith("lkctl: unchanged, from cache: ")
