"""nox sessions: what CI and developers run.

`nox` with no arguments runs the default list (everything but bench); .ci/run and the
README's test command call exactly that. Each session installs what it needs into its
own virtualenv from this machine's Python, so only Python is required.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "typing", "tests", "compiled", "interop", "fuzz", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


#: Branch coverage the tests session requires of each package. transports is a ratchet
#: on its way to 95 % (issue 23): raise it as tests reach more of the drivers.
COVERAGE = {"lmtp_core": 100, "transports": 85}


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit, property and driver tests, with branch coverage of lmtp_core and transports
    (the processes the tests start included), each held to its floor in COVERAGE.

    Coverage starts before pytest (coverage run), not as a pytest plugin: the package's
    own pytest plugin (the pytest11 entry point) imports lmtp_core while pytest loads
    its plugins, before pytest-cov would start measuring."""
    session.install("-e", ".[test]")
    session.run("coverage", "erase")
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        "-m",
        "not interop",
        "--ignore=tests/interop",
        *session.posargs,
    )
    session.run("coverage", "combine", "--quiet")
    for package, floor in COVERAGE.items():
        session.run("coverage", "report", f"--include={package}/*", f"--fail-under={floor}")


@nox.session(python=PYTHON)
def compiled(session: nox.Session) -> None:
    """The optional accelerated build (docs/guide/compiled.rst): a wheel with lmtp_core
    compiled by mypyc (LMTP_MYPYC=1, needs a C compiler), installed, then the core,
    driver, hostile and CLI tests run against it. They run from a copy of tests/ in a
    temporary directory, so that the checkout's pure lmtp_core is not on sys.path;
    tests/core/test_build.py fails if the compiled modules are not the ones loaded."""
    session.install(".[test]")
    session.install("--force-reinstall", "--no-deps", ".", env={"LMTP_MYPYC": "1"})
    tmp = session.create_tmp()
    shutil.rmtree(os.path.join(tmp, "tests"), ignore_errors=True)
    shutil.copytree(
        "tests", os.path.join(tmp, "tests"), ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy("pyproject.toml", tmp)  # pytest's settings: strict markers, warnings as errors
    session.chdir(tmp)
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/core",
        "tests/transports",
        "tests/hostile",
        "tests/cli",
        *session.posargs,
        env={"LMTP_EXPECT_COMPILED": "1"},
    )


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Tests against real peers. With LMTP_REQUIRE_PEERS=1 (CI) a missing peer fails."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-m",
        "interop",
        "tests/interop",
        *session.posargs,
        env={"LMTP_REQUIRE_PEERS": os.environ.get("LMTP_REQUIRE_PEERS", "0")},
    )


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on both packages and on the typing tests."""
    session.install("-e", ".[typing]")
    # tests/typing/rejected/ holds calls that must fail; test_rejections.py checks them.
    session.run(
        "mypy",
        "--strict",
        "lmtp_core",
        "transports",
        "tests/typing/check_public_api.py",
        "tests/typing/test_rejections.py",
    )
    session.run("python", "tools/unasync.py", "--check")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Each atheris target for a bounded time (FUZZ_SECONDS, default 30)."""
    session.install("-e", ".[fuzz]")
    seconds = os.environ.get("FUZZ_SECONDS", "30")
    session.run("python", "tests/fuzz/run_all.py", "--seconds", seconds, *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The Sphinx site in docs/, built from scratch with warnings as errors (-W) and every
    cross-reference checked (-n); offline. HTML goes to .nox/docs/tmp/html."""
    session.install("-e", ".[docs]")
    tmp = session.create_tmp()
    session.run(
        "sphinx-build",
        "-E",
        "-W",
        "--keep-going",
        "-n",
        "-b",
        "html",
        "-d",
        os.path.join(tmp, "doctrees"),
        "docs",
        os.path.join(tmp, "html"),
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers; never part of CI."""
    session.install("-e", ".[test]")
    # bench_delivery.py runs every section, bench_core.py's table included (section 7).
    session.run("python", "benchmarks/bench_delivery.py", *session.posargs)
