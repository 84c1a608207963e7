"""nox sessions: what CI and developers run.

`nox` with no arguments runs the default list (everything but bench); .ci/run and the
README's test command call exactly that. Each session installs what it needs into its
own virtualenv, so only the interpreters are required: python3.11, python3.12 and
python3.13 on PATH (.ci/run selects them with pyenv). A missing one fails the run.

Which Python runs what: the tests run on every supported version (PYTHONS); only the
oldest one's run measures coverage, which makes a run slower. mypy checks
the oldest and the newest version's rules (--python-version) from one interpreter.
lint, the compiled build, interop, fuzz, docs and the sdist check run on the oldest
(PYTHON) only, to keep CI within its time: they exercise no version-specific code.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.sessions = [
    "lint",
    "typing",
    "tests",
    "compiled",
    "interop",
    "fuzz",
    "docs",
    "sdist",
]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

#: The supported Python versions, oldest first. pyproject.toml's classifiers and
#: requires-python, .ci/run and docs/guide/versions.rst say the same
#: (tests/docs/test_release.py checks).
PYTHONS = ["3.11", "3.12", "3.13"]
PYTHON = PYTHONS[0]


#: Branch coverage the tests session requires of each package (issue 23); lines that
#: cannot run in CI are excluded one by one with a reason (# pragma: no cover - why).
COVERAGE = {"lmtp_core": 100, "transports": 95}


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Unit, property and driver tests on every supported Python (tests-3.11, ...). On
    the oldest, with branch coverage of lmtp_core and transports (the processes the
    tests start included), each held to its floor in COVERAGE.

    Coverage starts before pytest (coverage run), not as a pytest plugin: the package's
    own pytest plugin (the pytest11 entry point) imports lmtp_core while pytest loads
    its plugins, before pytest-cov would start measuring."""
    session.install("-e", ".[test]")
    if session.python != PYTHON:
        session.run("pytest", "-m", "not interop", "--ignore=tests/interop", *session.posargs)
        return
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
    compiled by mypyc (LMTP_MYPYC=1, needs a C compiler), installed, then the core and
    hostile tests run against it, with the drivers' tests that drive the core through
    every runtime (client and server end to end, faults scripted and real). Only
    lmtp_core is compiled, so the drivers' own tests (pools, signals, workers, the CLI),
    which take most of the suite's time, run once, in `tests`. They run from a copy of
    tests/ in a temporary directory, so that the checkout's pure lmtp_core is not on
    sys.path; tests/core/test_build.py fails if the compiled modules are not the ones
    loaded."""
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
        "tests/hostile",
        "tests/transports/test_client_server.py",
        "tests/transports/test_scripted_faults.py",
        "tests/transports/test_faults.py",
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
    """mypy --strict on both packages, the typing tests and the documentation's
    examples, under the rules of the oldest and of the newest supported Python."""
    session.install("-e", ".[typing]")
    for version in (PYTHONS[0], PYTHONS[-1]):
        # tests/typing/rejected/ holds calls that must fail; test_rejections.py checks them.
        session.run(
            "mypy",
            "--strict",
            f"--python-version={version}",
            "lmtp_core",
            "transports",
            "tests/typing/check_public_api.py",
            "tests/typing/test_rejections.py",
        )
        # A directory of scripts, not a package: checked on its own (adapter.py is
        # imported by test_adapter.py as a top-level module).
        session.run("mypy", "--strict", f"--python-version={version}", "docs/examples")
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
def sdist(session: nox.Session) -> None:
    """The release files as a packager gets them: the sdist is built, the wheel is
    built from that sdist (python -m build does both, in that order), the wheel is
    installed into a new virtualenv, and tests/core and `lmtp demo` run there, from the
    sdist's own copy of the tests, with neither the checkout nor the sdist's sources on
    sys.path. The sdist must hold LICENSE, CHANGELOG.md, docs/ and tests/."""
    session.install("build>=1.2")
    tmp = os.path.abspath(session.create_tmp())  # the tests run from another directory
    shutil.rmtree(tmp)  # what an earlier run left: the builds, the venv, lmtp demo's Maildir
    os.makedirs(tmp)
    dist = os.path.join(tmp, "dist")
    session.run("python", "-m", "build", "--outdir", dist, ".")
    (sdist_file,) = glob.glob(os.path.join(dist, "*.tar.gz"))
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    unpacked = os.path.join(tmp, "unpacked")
    shutil.unpack_archive(sdist_file, unpacked)
    (source,) = glob.glob(os.path.join(unpacked, "*"))
    for needed in ("LICENSE", "CHANGELOG.md", "README.md", "docs/index.rst", "tests/core"):
        if not os.path.exists(os.path.join(source, needed)):
            session.error(f"the sdist has no {needed}")
    # Only the tests and pytest's settings are copied next to the run: the package under
    # test is the installed wheel.
    run = os.path.join(tmp, "run")
    shutil.copytree(os.path.join(source, "tests"), os.path.join(run, "tests"))
    shutil.copy(os.path.join(source, "pyproject.toml"), run)
    venv = os.path.join(tmp, "venv")
    session.run("python", "-m", "venv", venv)
    bindir = os.path.join(venv, "bin")
    python = os.path.join(bindir, "python")
    # The wheel, and what tests/core needs besides (not the whole test extra: time).
    install = [wheel, "pytest>=8", "hypothesis>=6.100"]
    session.run(python, "-m", "pip", "install", "--quiet", *install, external=True)
    session.chdir(run)
    session.run(python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/core", external=True)
    session.run(os.path.join(bindir, "lmtp"), "demo", external=True)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers; never part of CI."""
    session.install("-e", ".[test]")
    # bench_delivery.py runs every section, bench_core.py's table included (section 7).
    session.run("python", "benchmarks/bench_delivery.py", *session.posargs)
