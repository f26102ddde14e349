"""The thin layer between invoke and the library: settings from config, library errors to exit codes."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task
from invoke.tasks import task as _invoke_task

from lkctl.errors import ConfigError, LkError

if TYPE_CHECKING:
    from lkctl.settings import Settings

__all__ = [
    "RESERVED_SHORT_FLAGS",
    "LkTask",
    "adapt",
    "config_tree",
    "parse_vars",
    "remainder_argv",
    "settings_from",
    "size_sources",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")

RESERVED_SHORT_FLAGS = frozenset("hfVl")
"""`lkctl`'s core short flags (-h help, -f config file, -V version, -l list): no task flag may take them."""


class LkTask(Task[Callable[..., Any]]):
    """A task whose short flags are predictable: `-X` only for an option starting with X, never a core flag's.

    invoke picks any free letter of the name (`--timeout` became `-e`, `--hypervisor` took `-h` from --help);
    here an option gets its own first letter if no earlier option has it, or what `short={"name": "v"}` says
    (`""` for none). Positional arguments get no short flag: they are typed bare.
    """

    def __init__(self, body: Callable[..., Any], *args: Any, short: Mapping[str, str] | None = None, **kwargs: Any):
        self.short = dict(short or {})
        super().__init__(body, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Plain invoke lets a first positional swallow `--help` (`invoke vm.stop --help` → "no VM matches '--help'");
        # answer with the task's help instead. (`lkctl` catches this before parsing.)
        if any(kwargs.get(p) in ("--help", "-h") for p in self.positional):
            print(self.help_text())
            raise Exit(code=0)
        return super().__call__(*args, **kwargs)

    def help_text(self) -> str:
        """Usage line, docstring, arguments and options, as `lkctl TASK --help` prints them."""
        import inspect
        import os

        from lkctl.usage import option_help, task_usage

        binary = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "invoke"
        typed = [w for w in sys.argv[1:] if w == self.name or w.endswith(f".{self.name}")]
        name = typed[0] if typed else self.name
        args = self.get_arguments()
        positionals = [str(a.name) for a in args if a.positional]
        options = sorted((a for a in args if not a.positional), key=lambda a: str(a.name))
        lines = [task_usage(binary, name, positionals, bool(options)), ""]
        lines += ["  " + line if line.strip() else "" for line in (inspect.getdoc(self.body) or "").splitlines()]
        if positionals:
            lines += ["", "Arguments:"]
            lines += [f"  {p.upper():<12} {a.help or ''}".rstrip() for p, a in zip(positionals, args, strict=False)]
        lines += ["", "Options:"]
        lines += [f"  {spec:<30} {text}".rstrip() for spec, text in map(option_help, options)] or ["  none"]
        return "\n".join(lines)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Any]:
        # invoke pops each help text as it uses it: a second call (help, completion, a test) would get none
        saved = dict(self.help)
        try:
            args: list[Any] = super().get_arguments(ignore_unknown_help)
        finally:
            self.help = saved
        return args

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        auto, self.auto_shortflags = self.auto_shortflags, False
        try:
            opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        finally:
            self.auto_shortflags = auto
        if not auto or opts["positional"]:
            return opts
        dashed = name.replace("_", "-")
        explicit = self.short.get(name, self.short.get(dashed))
        if explicit is None:
            claimed = {v for k, v in self.short.items() if k not in (name, dashed)}
            letter = dashed[0] if dashed[0] not in taken_names | claimed | RESERVED_SHORT_FLAGS else ""
        else:
            letter = explicit
        if letter:
            if not (len(letter) == 1 and letter.isalpha()) or letter in RESERVED_SHORT_FLAGS:
                raise ValueError(f"task {self.name}: -{letter} cannot be a short flag (taken by lkctl or not a letter)")
            opts["names"] = [*opts["names"], letter]
        return opts


def task(*args: Any, **kwargs: Any) -> Callable[..., Any]:
    """invoke's `@task`, making `LkTask`s: use it for every lkctl task (same arguments, plus `short=`)."""
    kwargs.setdefault("klass", LkTask)
    made: Callable[..., Any] = _invoke_task(*args, **kwargs)
    return made


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping) or hasattr(obj, "keys"):
        return {k: _plain(obj[k]) for k in obj}
    return obj


def config_tree(c: Context) -> dict[str, Any]:
    """The `lkctl` config tree for `c`: the shared config files under what `c`'s own config really set.

    The same files count under `lkctl` and under `invoke` (see lkctl.configfiles); a `-f FILE` that does not exist
    is an error under both (invoke alone would ignore it).
    """
    from pathlib import Path

    from lkctl.configfiles import config_files, explicit_values, merge_trees, read_files

    try:
        tree = c.config.get("lkctl", {})
    except AttributeError:
        tree = {}
    runtime = getattr(c.config, "_runtime_path", None)  # invoke keeps -f FILE here, with no public getter
    if runtime and not Path(runtime).is_file():
        raise ConfigError(f"config file {runtime} does not exist (given with -f or INVOKE_RUNTIME_CONFIG)")
    files = read_files(config_files())
    levels = {name: getattr(c.config, f"_{name}", None) for name in (*_BELOW_FILES, *_ABOVE_FILES)}
    if not all(isinstance(v, Mapping) for v in levels.values()):  # not an invoke Config: all of it over the files
        return merge_trees(files, explicit_values(_plain(tree)))
    # invoke's own files (system, user, project: for `lkctl` the same as some of ours) sit below ours, so the
    # documented order holds (~/.lkctl.yaml under the project's invoke.yaml); -f, the environment and values set
    # in code stay above them
    below: dict[str, Any] = {}
    above: dict[str, Any] = {}
    for name in _BELOW_FILES:
        below = merge_trees(below, _plain(levels[name]).get("lkctl") or {})
    for name in _ABOVE_FILES:
        above = merge_trees(above, _plain(levels[name]).get("lkctl") or {})
    return merge_trees(merge_trees(explicit_values(below), files), explicit_values(above))


_BELOW_FILES = ("collection", "system", "user", "project")
_ABOVE_FILES = ("env", "runtime", "overrides", "modifications")


def size_sources(c: Context, **flags: object) -> dict[str, str]:
    """For each VM size flag (`memory=0`, `cpus=2`): `--cpus`, `environment LKCTL_VM_…`, `config` or ""."""
    import os

    from lkctl.configfiles import setting_source

    tree = config_tree(c)
    return {k: f"--{k}" if v else setting_source("vm", k, tree, os.environ) for k, v in flags.items()}


def settings_from(c: Context) -> Settings:
    """Settings from the invoke config of `c` (a user's own Context works too: missing keys mean defaults)."""
    from lkctl.settings import load_settings

    return load_settings({"lkctl": config_tree(c)})


@overload
def adapt(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def adapt(*, failure_code: int) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def adapt(func: Callable[P, R] | None = None, /, *, failure_code: int | None = None) -> Any:
    """Turn LkError into `Exit(message, code)` and Ctrl-C into exit 130, so users never see a traceback.

    `@adapt(failure_code=125)` gives every lkctl failure that one code, for tasks whose own exit code is another
    program's (vm.exec, vm.shell): a script tells "lkctl could not run it" (125) from the command's status.
    """

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(f)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return f(*args, **kwargs)
            except LkError as e:
                raise Exit(f"lkctl: {e.message}", code=failure_code or e.exit_code) from None
            except KeyboardInterrupt:
                raise Exit("lkctl: interrupted", code=130) from None

        return wrapper

    return decorate if func is None else decorate(func)


def remainder_argv(c: Context) -> list[str]:
    """The words after `--` exactly as the user typed them.

    invoke joins them into one string (`c.remainder`), losing quoting; when this process was started from a
    command line whose tail after `--` is those same words, take them from `sys.argv` unchanged.
    """
    remainder = getattr(c, "remainder", "") or ""
    if not remainder:
        return []
    argv = sys.argv
    if "--" in argv:
        tail = argv[argv.index("--") + 1 :]
        if " ".join(tail) == remainder:
            return tail
    return shlex.split(remainder)


def parse_vars(items: list[str] | None, *, flag: str = "--var") -> dict[str, str]:
    """`--var K=V` (repeatable; `flag` names it in errors) into a dict; a later K wins."""
    from lkctl.errors import ConfigError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected NAME=VALUE")
        out[key] = value
    return out
