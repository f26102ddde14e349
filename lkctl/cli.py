"""The `lkctl` command: an invoke Program over the same collections `invoke` users import.

What it adds to invoke's Program: `TASK --help`/`-h` for every task (invoke lets a task's first positional
swallow `--help`), usage lines that show positionals, parse errors that say what to type instead, no inherited
core flags that mean nothing here (`--dry`, `--echo`, `--hide`, `--pty`, `--warn-only`, `-T`...), a `-f FILE`
that must exist, and quiet exits when the reader of our output goes away (`lkctl vm.ps | head -1`).
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from invoke.config import Config
from invoke.exceptions import Exit, ParseError
from invoke.executor import Executor
from invoke.parser import Argument, ParserContext
from invoke.program import Program

from lkctl import __version__
from lkctl.tasks import ns
from lkctl.usage import INVOKE_ONLY, did_you_mean, explain_parse_error, option_help, task_usage

__all__ = [
    "USAGE_ERROR",
    "LkConfig",
    "LkProgram",
    "did_you_mean",
    "explain_parse_error",
    "make_program",
    "option_help",
    "program",
    "task_usage",
]

USAGE_ERROR = 2
"""Exit code of a command line lkctl cannot parse (vm.exec and vm.shell use 125 instead, as Docker does)."""

_OWN_FAILURE = {"vm.exec": 125, "vm.shell": 125}

_LONG_ONLY = {"debug", "list-depth", "list-format"}  # their -d, -D, -F are left to tasks (-d is vm.run --detach)


class LkConfig(Config):
    """Config files `/etc/lkctl.yaml`, `~/.lkctl.yaml` and, unlike plain invoke, the project's `lkctl.yaml`."""

    prefix = "lkctl"

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        base: dict[str, Any] = Config.global_defaults()
        base["run"]["in_stream"] = False
        return base

    def load_shell_env(self) -> None:
        # invoke casts `LKCTL_LKCTL_VM_CPUS=e` to the default's type (int): a ValueError, a traceback, without this
        from invoke.exceptions import AmbiguousEnvVar, UncastableEnvVar

        try:
            super().load_shell_env()
        except (ValueError, AmbiguousEnvVar, UncastableEnvVar) as e:
            msg = f"lkctl: an LKCTL_* variable does not fit the setting it names: {str(e).splitlines()[0]}"
            raise Exit(msg, code=USAGE_ERROR) from None


_COMPLETION_SHELLS = ("bash", "fish", "zsh")  # invoke's completion scripts


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class LkProgram(Program):
    _config_error = ""  # a config file invoke could not merge (lkctl.invokeconfig): said once the task is known

    def create_config(self) -> None:
        from lkctl.errors import ConfigError
        from lkctl.invokeconfig import check_config_files, settings_defaults

        try:
            check_config_files(defaults={**Config.global_defaults(), **settings_defaults()})
        except ConfigError as e:  # invoke would fail with a traceback loading it: say it in one line instead
            self._config_error = e.message
            self.config = self.config_class(lazy=True)
            return
        super().create_config()

    def _usage_code(self) -> int:
        """The exit status of a usage or config error: 125 for vm.exec/vm.shell, whose own codes are the command's."""
        rest = list(self.core.unparsed) if getattr(self, "core", None) is not None else []
        return _OWN_FAILURE.get(rest[0] if rest else "", USAGE_ERROR)

    def core_args(self) -> list[Argument]:
        args = []
        for arg in super().core_args():
            if arg.name in INVOKE_ONLY:
                continue
            if arg.name in _LONG_ONLY:
                arg.names = (arg.name,)
            args.append(arg)
        return args

    def parse_core(self, argv: list[str] | None) -> None:
        # As Program.parse_core, minus the flags lkctl does not offer (--write-pyc).
        from invoke.completion.complete import print_completion_script
        from invoke.util import enable_logging

        self.normalize_argv(argv)
        try:
            self.parse_core_args()
        except ParseError as e:
            raise Exit(f"lkctl: {explain_parse_error(str(e), None, self.binary)}", code=USAGE_ERROR) from None
        except ValueError:  # a non-number given to --list-depth
            raise Exit(f"lkctl: --list-depth takes a whole number ({self.binary} --help)", code=USAGE_ERROR) from None
        if self.args.debug.value:
            enable_logging()
        if self.args.version.value:
            self.print_version()
            raise Exit
        if shell := self.args["print-completion-script"].value:
            if shell not in _COMPLETION_SHELLS:
                raise Exit(f"lkctl: no completion script for {shell!r}: use bash, fish or zsh", code=USAGE_ERROR)
            print_completion_script(shell=shell, names=self.binary_names)
            raise Exit

    def parse_collection(self) -> None:
        if self._config_error:
            raise Exit(f"lkctl: {self._config_error}", code=self._usage_code())
        super().parse_collection()
        from lkctl.configfiles import project_dir

        project = project_dir(Path.cwd())
        if project is not None:
            # invoke skips project config in bundled-namespace mode; load the project's lkctl.yaml ourselves (the
            # tasks read the same files again through lkctl.configfiles, which also count its invoke.yaml)
            self.config.set_project_location(str(project))
            self.config.load_project()
        self._check_task_word()

    def _contexts(self) -> dict[str, ParserContext]:
        contexts = self.collection.to_contexts(ignore_unknown_help=self.config.tasks.ignore_unknown_help)
        out: dict[str, ParserContext] = {}
        for ctx in contexts:
            out[str(ctx.name)] = ctx
            for alias in ctx.aliases:
                out[alias] = ctx
        return out

    def _check_task_word(self) -> None:
        """Unknown task → did-you-mean; `TASK ... --help`/`-h` (before any `--`) → that task's help."""
        rest = list(self.core.unparsed)
        if not rest:
            return
        word = rest[0]
        contexts = self._contexts()
        if word.startswith("-"):
            msg = explain_parse_error(f"No idea what '{word}' is!", None, self.binary)
            raise Exit(f"lkctl: {msg}", code=USAGE_ERROR)
        if word not in contexts:
            close = did_you_mean(word, contexts)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise Exit(f"lkctl: no task {word!r}{hint} ({self.binary} --list shows them all)", code=USAGE_ERROR)
        head = self._words_before_dashes()
        if "--help" in head or "-h" in head:
            # the help is for the task named last before the flag (`lkctl vm.stop a vm.rm --help` → vm.rm)
            flag_at = min(i for i, w in enumerate(head) if w in ("--help", "-h"))
            named = [w for w in head[:flag_at] if w in contexts]
            self.print_task_help(named[-1] if named else word)
            raise Exit

    def parse_tasks(self) -> None:
        self._check_follow_habit()
        try:
            super().parse_tasks()
        except ParseError as e:
            name = e.context.name if e.context is not None else None
            code = _OWN_FAILURE.get(name or "", USAGE_ERROR)
            raise Exit(f"lkctl: {explain_parse_error(str(e), e.context, self.binary)}", code=code) from None
        except ValueError as e:  # a non-number given to an INT option
            bad = re.search(r"'(.*)'", str(e))
            what = f"{bad.group(1)!r} is not a whole number" if bad else str(e)
            msg = f"lkctl: {what} ({self.binary} TASK --help shows each option's type)"
            raise Exit(msg, code=USAGE_ERROR) from None
        self._check_repeatable_flags()

    def _words_before_dashes(self) -> list[str]:
        """The task words and options lkctl parses: what follows the core options, up to a `--`."""
        words = list(self.core.unparsed)
        return words[: words.index("--")] if "--" in words else words

    def _check_follow_habit(self) -> None:
        """`vm.logs -f NAME` (docker's follow): -f is lkctl's config file option, so say how to follow instead of
        what invoke would make of it."""
        words = self._words_before_dashes()
        if len(words) > 1 and "-f" in words[1:]:
            ctx = self._contexts().get(words[0])
            if ctx is not None and "follow" in ctx.args:
                raise Exit(
                    f"lkctl: {words[0]}: -f is lkctl's config file option (lkctl -f FILE TASK); follow with --follow",
                    code=_OWN_FAILURE.get(words[0], USAGE_ERROR),
                )

    def _check_repeatable_flags(self) -> None:
        """A repeatable option (`--port`, `--var`...) with no value after it: invoke takes it as given no times, so
        `vm.run --port` would run without the forward the user meant; refuse it as invoke refuses other options."""
        words = self._words_before_dashes()
        repeatable = {f for ctx in self.tasks for f, arg in ctx.flags.items() if arg.kind is list}
        flags = {f for ctx in [self.initial_context, *self.tasks] for f in [*ctx.flags, *ctx.inverse_flags]}
        for i, word in enumerate(words):
            if word in repeatable and (i + 1 == len(words) or words[i + 1] in flags):
                task = next(str(ctx.name) for ctx in self.tasks if word in ctx.flags)
                raise Exit(
                    f"lkctl: {task}: {word} needs a value ({self.binary} {task} --help shows its form)",
                    code=_OWN_FAILURE.get(task, USAGE_ERROR),
                )

    def update_config(self, merge: bool = True) -> None:
        # As Program.update_config without invoke's shell-command overrides, and a -f FILE that must exist.
        path = self.args.config.value or os.environ.get("LKCTL_RUNTIME_CONFIG")
        path = path or os.environ.get("INVOKE_RUNTIME_CONFIG")
        if path and not Path(path).is_file():
            what = "is not a regular file" if Path(path).exists() else "does not exist"
            raise Exit(f"lkctl: config file {path} {what} (given with -f or *_RUNTIME_CONFIG)", self._usage_code())
        self.config.set_runtime_path(Path(path) if path else None)
        try:
            self.config.load_runtime(merge=False)
        except Exception as e:  # yaml/json/py errors from a user's file: one line, no traceback
            raise Exit(f"lkctl: cannot read config file {path}: {str(e).splitlines()[0]}", self._usage_code()) from None
        if path:
            from lkctl.errors import ConfigError
            from lkctl.invokeconfig import check_config_tree, settings_defaults

            try:  # invoke's merge of a value over a mapping (`run: 3`) is a traceback
                check_config_tree(self.config._runtime, path, {**Config.global_defaults(), **settings_defaults()})
            except ConfigError as e:
                raise Exit(f"lkctl: {e.message}", self._usage_code()) from None
        if merge:
            self.config.merge()

    def execute(self) -> None:
        # As Program.execute, with a `tasks.executor_class` from a config file that names no Executor said in one
        # line (invoke's own code fails on it with an ImportError, AttributeError or TypeError traceback)
        executor = self._executor_class()(self.collection, self.config, self.core)
        executor.execute(*self.tasks)

    def _executor_class(self) -> type[Executor]:
        import importlib

        dotted = self.config.tasks.executor_class
        if dotted is None:
            return self.executor_class
        where = f"config: tasks.executor_class {dotted!r}"
        if not isinstance(dotted, str) or "." not in dotted.strip("."):
            raise Exit(f"lkctl: {where} must name a class as module.Class, or be left out", self._usage_code())
        module_path, _, class_name = dotted.rpartition(".")
        try:
            klass = getattr(importlib.import_module(module_path), class_name)
        except Exception as e:  # the user's module may fail in any way while it imports
            raise Exit(f"lkctl: {where}: cannot load it ({type(e).__name__}: {e})", self._usage_code()) from None
        if not (isinstance(klass, type) and issubclass(klass, Executor)):
            raise Exit(f"lkctl: {where} is not a subclass of invoke.Executor", self._usage_code())
        return klass

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [--core-opts] TASK [--task-opts] ... (`{self.binary} TASK --help` for one task)")
        print("")
        print("Core options:")
        print("")
        self.print_columns(self.initial_context.help_tuples())
        self.list_tasks()

    def print_task_help(self, name: str) -> None:
        ctx = self._contexts()[name]
        positionals = [str(a.name) for a in ctx.positional_args]
        options = [a for a in ctx.args.values() if not a.positional]
        print(task_usage(self.binary, name, positionals, bool(options)))
        print("")
        doc = inspect.getdoc(self.collection[name])
        for line in (doc or "").splitlines():
            print(self.leading_indent + line if line.strip() else "")
        if positionals:
            print("")
            print("Arguments:")
            self.print_columns([(p.upper().replace("-", "_"), ctx.args[p].help or "") for p in positionals])
        print("")
        print("Options:")
        if options:
            self.print_columns([option_help(a) for a in sorted(options, key=lambda a: str(a.name))])
        else:
            print(self.leading_indent + "none")
            print("")

    def parse_cleanup(self) -> None:
        if self.args.complete.value:  # VM and template names before invoke's task names (it then exits)
            import re

            from lkctl.completion import completion_candidates

            invocation = re.sub(r"^\S*lkctl ", "", self.core.remainder)
            for word in completion_candidates(invocation, self.collection.task_names):
                print(word)
        topic, root = self.args.help.value, self.args.list.value
        if isinstance(topic, str) and topic not in self.parser.contexts:  # `lkctl --help NAME`
            close = did_you_mean(topic, self._contexts())
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise Exit(f"lkctl: no task {topic!r}{hint} ({self.binary} --list shows them all)", code=USAGE_ERROR)
        if isinstance(root, str):  # `lkctl --list NAME`
            try:
                self.collection.subcollection_from_path(root)
            except KeyError:
                have = ", ".join(sorted(self.collection.collections))
                raise Exit(f"lkctl: no task collection {root!r} (collections: {have})", code=USAGE_ERROR) from None
        super().parse_cleanup()

    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        # SIGTERM/SIGHUP (CI cancel, closed terminal) unwind like Ctrl-C so cleanup runs and no QEMU is orphaned
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        for s in previous:
            signal.signal(s, _sigterm_to_interrupt)
        try:
            super().run(argv, exit)
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (`lkctl vm.ps | head -1`): stop quietly, as `ls | head` does. stdout now goes
            # nowhere so the interpreter's final flush cannot raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            if exit:
                sys.exit(128 + signal.SIGPIPE)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def make_program() -> LkProgram:
    """A fresh `lkctl` Program (tests run several in one process)."""
    return LkProgram(
        name="lkctl",
        binary="lkctl",
        binary_names=["lkctl"],
        version=__version__,
        namespace=ns,
        config_class=LkConfig,
    )


program = make_program()
