"""Every code block of README.md and docs/ runs as a test (collected by the root conftest.py).

Each page runs in a fresh temporary directory (pytest's, kept for the last 3 runs), with
the repository's ``examples/`` linked into it and ``.venv`` pointing at the environment
running the tests, so it has its own embedded broker (``./.busapp/``) and the page's
commands read as they do in a clone. The blocks of a page run in order and share one
Python namespace:

- ```` ```python ````: run in the page's namespace (a block starting with ``>>>`` is a
  doctest: its outputs are checked).
- ```` ```{code-block} LANG ```` with ``:caption: PATH``: the block *is* the file ``PATH`` of
  the page's directory: it is written there (a ``.py`` file is compiled too), for the
  blocks after it to import or run.
- ```` ```console ````: a terminal session. Each ``$ command`` (continued by a trailing
  ``\\``) runs with bash in the page's directory; the lines up to the next ``$`` are its
  expected output (stdout then stderr as the terminal shows them). A line ``...`` stands
  for any lines, ``...`` inside a line for any text, and trailing spaces are ignored. A
  command shown without output must exit 0. ``export NAME=VALUE`` sets a variable for the
  rest of the page, shell and Python blocks alike.
- ```` ```bash ````: a script, run with ``bash -e`` in the page's directory; must exit 0.
- Commands that serve until stopped (``busapp run ...``, ``busapp storage ...``) start in
  the background, in a console or bash block alike; the next block that is not one of them
  waits until a worker of each has logged that it is ready. They stop as Ctrl-C stops them
  (SIGINT) when the page ends, or when the same command line is started again (the reader
  stopped and restarted it).
- Data blocks (``text``, ``json``, ``yaml``, ``toml``, ``ini``, ``python-traceback``) are
  shown, not run; a ``json`` block must parse (one JSON value per line is accepted too).
- ``<!-- skip: next "why" -->`` before a block: not run, reported as skipped with the
  reason. Keep these few: a cluster, an install into a new venv, the test run itself.
- ``<!-- invisible-code-block: python ... -->``: set-up the reader does not need to see.
- ``<!-- files-from: other.md -->``: the files the blocks of ``other.md`` write, written
  here first (a tutorial step goes on from the files of the step before).

A block in any other language fails the page, so no block can escape being run.
A page that points ``BUSAPP_BROKER_URL`` at a server (RabbitMQ, Redis) gets a private
exchange (``BUSAPP_EXCHANGE``, unless the page sets one), so runs never share queues, and the
queues of the services it started are deleted when it ends. When that server is not up,
the page is skipped, or fails under ``BUSAPP_REQUIRE_SERVICES=1`` (as in CI).
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.abstract.lexers import LexerCollection
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.myst import ClearNamespaceParser, SkipParser
from sybil.parsers.myst.lexers import DirectiveLexer

ROOT = Path(__file__).resolve().parent.parent
#: Languages of blocks that are shown, not run.
DATA_LANGUAGES = {"text", "json", "yaml", "toml", "ini", "python-traceback"}
#: Subcommands that serve until stopped.
SERVING = {"run", "storage"}
#: Seconds a serving command may take to log that a worker is ready.
READY_TIMEOUT = 60.0
#: Seconds any other command may take.
COMMAND_TIMEOUT = 120.0
PAGE_KEY = "__busapp_page__"
#: Threads stopping the services of pages that have ended (see :meth:`Page.close`).
STOPPING: list[threading.Thread] = []


def finish_stopping() -> None:
    """Wait until the services of every ended page have stopped (at the end of the run)."""
    while STOPPING:
        STOPPING.pop().join()


# -- the page: working directory, environment, background services ------------------------


class Page:
    """The state one page's blocks share: its directory, its environment, what it started."""

    def __init__(self, document: Document, tmp: pytest.TempPathFactory) -> None:
        self.source = Path(document.path)
        self.dir = tmp.mktemp(f"docs-{self.source.stem}")
        (self.dir / "examples").symlink_to(ROOT / "examples")
        (self.dir / ".venv").symlink_to(Path(sys.prefix))
        self.saved_env = dict(os.environ)
        self.saved_cwd = os.getcwd()
        self.saved_path = list(sys.path)
        self.saved_modules = set(sys.modules)
        self.exported: set[str] = set()
        self.services: dict[str, subprocess.Popen] = {}
        self.starting: list[tuple[str, subprocess.Popen, Path]] = []
        self.served: list[tuple[str, str, str]] = []  # (command, broker URL, exchange)
        self._start()

    def _start(self) -> None:
        for name in list(os.environ):
            if name.startswith("BUSAPP_") and not name.startswith(("BUSAPP_TEST_",
                                                                   "BUSAPP_REQUIRE_")):
                del os.environ[name]
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        os.chdir(self.dir)
        sys.path.insert(0, str(self.dir))
        # As in a new process: a test that ran before in this process may have left structlog
        # configured (structlog.testing.capture_logs does, on exit), and a library's loggers
        # then print where the page's output is compared.
        structlog.reset_defaults()

    def export(self, name: str, value: str) -> None:
        """``export NAME=VALUE``: for the rest of the page."""
        os.environ[name] = value
        self.exported.add(name)
        if name == "BUSAPP_BROKER_URL":
            self._use_server(value)

    def _use_server(self, url: str) -> None:
        first = url.split(";")[0]
        parts = urlsplit(first)
        if parts.scheme in ("memory", "redis+socket"):
            return
        port = parts.port or (5672 if parts.scheme.startswith("amqp") else 6379)
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=1).close()
        except OSError:
            why = f"{parts.scheme} server not reachable on {parts.hostname}:{port}"
            if os.environ.get("BUSAPP_REQUIRE_SERVICES") == "1":
                pytest.fail(why + " (BUSAPP_REQUIRE_SERVICES=1: a missing service is a failure)")
            pytest.skip(why)
        if "BUSAPP_EXCHANGE" not in self.exported:
            os.environ["BUSAPP_EXCHANGE"] = f"docs-{uuid.uuid4().hex[:10]}"

    def serve(self, command: str) -> None:
        """Start a serving command in the background (see :meth:`wait_ready`)."""
        if command in self.services:
            self._stop(self.services.pop(command))
        log_path = self.dir / f".service-{len(self.served)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.dir,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.services[command] = process
        self.starting.append((command, process, log_path))
        self.served.append((command, os.environ.get("BUSAPP_BROKER_URL", ""),
                            os.environ.get("BUSAPP_EXCHANGE", "commissaire")))

    def wait_ready(self) -> None:
        """Return once a worker of every service started since the last call logged that it
        is ready. Services started one after the other start together; the block after
        them waits here."""
        deadline = time.monotonic() + READY_TIMEOUT
        for command, process, log_path in self.starting:
            while b"worker ready" not in log_path.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    output = log_path.read_text(errors="replace")
                    raise AssertionError(f"{command!r} did not get ready "
                                         f"(exit {process.poll()}):\n{output}")
                time.sleep(0.05)
        self.starting.clear()

    @staticmethod
    def _stop(*processes: subprocess.Popen) -> None:
        """Ctrl-C (SIGINT) to each process group, all at once; then wait for them."""
        running = [p for p in processes if p.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGINT)
        for process in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def close(self) -> None:
        """Restore the test process; stop what the page started and delete its queues on
        servers. Services on the embedded broker finish stopping in the background while
        the next page runs (:func:`finish_stopping` waits for them)."""
        try:
            if any(self._on_server(url) for _, url, _ in self.served):
                self._stop(*self.services.values())
                self._delete_queues()
                self._stop_broker()
            else:
                for process in self.services.values():
                    if process.poll() is None:
                        os.killpg(process.pid, signal.SIGINT)
                stopping = threading.Thread(target=self._stop_then_broker,
                                            args=list(self.services.values()), daemon=True)
                stopping.start()
                STOPPING.append(stopping)
        finally:
            os.chdir(self.saved_cwd)
            os.environ.clear()
            os.environ.update(self.saved_env)
            sys.path[:] = self.saved_path
            for name in set(sys.modules) - self.saved_modules:
                module_file = getattr(sys.modules[name], "__file__", None) or ""
                if module_file.startswith(str(self.dir)):
                    del sys.modules[name]

    def _stop_then_broker(self, *processes: subprocess.Popen) -> None:
        self._stop(*processes)
        self._stop_broker()

    def _stop_broker(self) -> None:
        from busapp.transport.embedded import stop_embedded_broker

        # No waiting for its graceful stop: the server dies with its keeper.
        stop_embedded_broker(str(self.dir / ".busapp"), timeout=0)

    @staticmethod
    def _on_server(url: str) -> bool:
        return bool(url) and urlsplit(url.split(";")[0]).scheme not in ("memory", "redis+socket")

    def _delete_queues(self) -> None:
        from tests._services import delete_queues

        for command, url, exchange in self.served:
            if not self._on_server(url):
                continue
            delete_queues(url, exchange, *self._queues_of(command, exchange))

    def _queues_of(self, command: str, exchange: str) -> list[str]:
        words = shlex.split(command)
        if words[1] == "storage":
            from busapp.storage.service import make_app

            app = make_app("memory://")
        else:
            from busapp.cli.locate import load_target

            app = load_target(words[2]).app
        if app is None:
            return []
        queue = app.queue_for(exchange)
        return [queue, f"{queue}.dead", *(h.queue_name(queue) for h in app.storage_handlers)]


def page_of(example: Example) -> Page:
    """The page ``example`` belongs to (made at its first block)."""
    namespace = example.document.namespace
    if PAGE_KEY not in namespace:
        namespace[PAGE_KEY] = Page(example.document, namespace["tmp_path_factory"])
    return namespace[PAGE_KEY]


def close_page(namespace: dict[str, Any]) -> None:
    """Sybil's teardown of a document."""
    page = namespace.pop(PAGE_KEY, None)
    if page is not None:
        page.close()


# -- shell blocks -----------------------------------------------------------------------


def is_serving(command: str) -> bool:
    """True for ``busapp run ...`` and ``busapp storage ...`` (any path to busapp)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    return len(words) >= 2 and Path(words[0]).name == "busapp" and words[1] in SERVING


def session(source: str) -> list[tuple[str, list[str]]]:
    """A console block as ``[(command, expected output lines), ...]``."""
    steps: list[tuple[str, list[str]]] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            raise ValueError(f"console blocks start each command with '$ ': {line!r}")
        command = line[2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + "\n" + lines[i]
        output = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append((command, output))
    return steps


def matches(expected: list[str], actual: list[str]) -> bool:
    """``actual`` lines fit ``expected`` (``...`` lines and ``...`` in lines as wildcards)."""
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:.*\n)*?"
        else:
            pattern += ".*?".join(re.escape(part) for part in line.rstrip().split("...")) + r"\n"
    text = "".join(line.rstrip() + "\n" for line in actual)
    return re.fullmatch(pattern, text) is not None


EXPORT = re.compile(r"export ([A-Z_][A-Z0-9_]*)=(.*)")


def run_command(page: Page, command: str, expected: list[str] | None) -> None:
    """One ``$ command`` of a console block (``expected`` None: a bash block line)."""
    export = EXPORT.fullmatch(command.strip())
    if export:
        page.export(export[1], shlex.split(export[2])[0] if export[2] else "")
        return
    if is_serving(command):
        page.serve(command)
        return
    page.wait_ready()
    done = subprocess.run(["bash", "-c", command], cwd=page.dir, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT)
    actual = done.stdout.splitlines()
    if expected:
        assert matches(expected, actual), (
            f"$ {command}\nexpected:\n" + "\n".join(expected) + "\ngot (exit "
            f"{done.returncode}):\n{done.stdout}")
    else:
        assert done.returncode == 0, f"$ {command}\nexit {done.returncode}:\n{done.stdout}"


def evaluate_console(example: Example) -> None:
    page = page_of(example)
    for command, expected in session(example.parsed):
        run_command(page, command, expected)


def evaluate_bash(example: Example) -> None:
    """A script: serving lines start in the background, the rest runs with bash -e."""
    page = page_of(example)
    script: list[str] = []
    for line in example.parsed.splitlines():
        if is_serving(line.split("#")[0].strip()):
            if script:
                run_command(page, "set -e\n" + "\n".join(script), None)
                script = []
            page.serve(line.split("#")[0].strip())
        else:
            script.append(line)
    if any(line.strip() and not line.strip().startswith("#") for line in script):
        run_command(page, "set -e\n" + "\n".join(script), None)


# -- python, files and data -------------------------------------------------------------


_python = PythonEvaluator()
_doctests = DocTestStringParser(DocTestEvaluator(doctest.ELLIPSIS))


def evaluate_python(example: Example) -> None:
    page_of(example).wait_ready()
    _python(example)


def evaluate_doctest(evaluator):
    def evaluate(example: Example):
        page_of(example).wait_ready()
        return evaluator(example)

    return evaluate


def evaluate_file(example: Example) -> None:
    """A ``{code-block}`` with a ``:caption:`` naming a file: write it into the page."""
    page = page_of(example)
    relative, source = example.parsed
    path = page.dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    if path.suffix == ".py":
        compile(source, str(path), "exec")


def evaluate_files_from(example: Example) -> None:
    """``<!-- files-from: OTHER.md -->``: the files OTHER.md's blocks wrote (and the pages it
    continues), written into this page's directory: a tutorial step starts where the
    previous one ended, yet each page runs on its own."""
    page = page_of(example)
    for relative, source in files_of(Path(example.document.path).parent / example.parsed):
        path = page.dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def files_of(path: Path) -> list[tuple[str, str]]:
    """``(relative path, text)`` of every file block of the page ``path``, in order."""
    document = Document(path.read_text(), str(path))
    files: list[tuple[str, str]] = []
    for region in sorted(BlockParser()(document), key=lambda r: r.start):
        if region.evaluator is evaluate_file:
            files.append(region.parsed)
        elif region.evaluator is evaluate_files_from:
            files += files_of(path.parent / region.parsed)
    return files


def evaluate_json(example: Example) -> None:
    text = example.parsed
    try:
        json.loads(text)
    except ValueError:
        for line in text.splitlines():  # JSON lines
            if line.strip():
                json.loads(line)


def evaluate_nothing(example: Example) -> None:
    """Data blocks are shown, not run."""


SHELL = {"console": evaluate_console, "bash": evaluate_bash}


class BlockParser:
    """Every fenced block of a page, each with the evaluator its language asks for."""

    def __init__(self) -> None:
        self.lexers = LexerCollection([
            FencedCodeBlockLexer(language=r"[^{\s`][^\n]*|",
                                 mapping={"language": "arguments", "source": "source"}),
            DirectiveLexer(directive=r"code-block|code", arguments=r".+"),
            DirectiveInHTMLCommentLexer(directive=r"invisible-code-block", arguments=r".+"),
        ])
        self.files_from = DirectiveInHTMLCommentLexer(directive=r"files-from", arguments=r"\S+")

    def __call__(self, document: Document):
        for region in self.files_from(document):
            region.parsed = region.lexemes["arguments"].strip()
            region.evaluator = evaluate_files_from
            yield region
        for region in self.lexers(document):
            language = (region.lexemes["arguments"] or "").strip() or "(none)"
            source = region.lexemes["source"]
            caption = (region.lexemes.get("options") or {}).get("caption")
            if caption and language not in SHELL:
                region.parsed, region.evaluator = (caption, str(source)), evaluate_file
                yield region
            elif language == "python" and source.lstrip().startswith(">>>"):
                yield from self._doctests(document, region, source)
            else:
                region.parsed, region.evaluator = source, self._evaluator(document, region,
                                                                          language)
                yield region

    @staticmethod
    def _doctests(document: Document, region: Region, source: Any):
        for doctest_region in _doctests(source, document.path):
            doctest_region.adjust(region, source)
            doctest_region.evaluator = evaluate_doctest(doctest_region.evaluator)
            yield doctest_region

    @staticmethod
    def _evaluator(document: Document, region: Region, language: str):
        if language == "python":
            return evaluate_python
        if language in SHELL:
            return SHELL[language]
        if language == "json":
            return evaluate_json
        if language in DATA_LANGUAGES:
            return evaluate_nothing
        raise ValueError(f"{document.path}, {document.line_column(region.start)}: a "
                         f"{language!r} block is neither run nor data; use python, console, "
                         f"bash or one of {', '.join(sorted(DATA_LANGUAGES))}")


sybil = Sybil(
    parsers=[BlockParser(), SkipParser(), ClearNamespaceParser()],
    path=str(ROOT),
    patterns=["README.md", "docs/*.md", "docs/*/*.md"],
    excludes=["docs/README.md"],
    teardown=close_page,
    fixtures=["tmp_path_factory"],
)
