"""The lock files (`make lock`): what the image and `make install` install, at one version each.

requirements.lock (the image: runtime, Flower, the build backend; hashes) and requirements-dev.lock (every
extra; `make install` takes it as constraints) are generated from pyproject.toml. These tests catch a lock
that fell behind pyproject.toml, two locks that disagree, and a Dockerfile or Makefile that stopped using
them; regenerating them needs PyPI, so that is `make lock`, not a test.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGE_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    found: dict[str, tuple[str, int]] = {}
    name = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            name = canonicalize_name(match["name"])
            assert name not in found, f"{path.name}: {name} pinned twice"
            found[name] = (match["version"], 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirements(*groups: str) -> list[Requirement]:
    project = pyproject()["project"]
    listed = list(project["dependencies"])
    for group in groups:
        listed += project["optional-dependencies"][group]
    return [Requirement(r) for r in listed]


def assert_satisfied(locked: dict[str, tuple[str, int]], wanted: list[Requirement], lock: str) -> None:
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} lacks {requirement} (run `make lock`)"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, pyproject.toml wants {requirement} (run `make lock`)"
        )


def test_the_image_lock_covers_runtime_flower_and_build_backend_with_hashes() -> None:
    locked = pins(IMAGE_LOCK)
    assert_satisfied(locked, requirements("monitor"), IMAGE_LOCK.name)
    build = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    assert_satisfied(locked, build, IMAGE_LOCK.name)
    unhashed = sorted(name for name, (_, hashes) in locked.items() if hashes == 0)
    assert not unhashed, f"--require-hashes would refuse: {unhashed}"
    # The image carries no test tools.
    assert "pytest" not in locked and "mypy" not in locked


def test_the_dev_lock_covers_every_extra_without_hashes() -> None:
    locked = pins(DEV_LOCK)
    assert_satisfied(locked, requirements("monitor", "test"), DEV_LOCK.name)
    # pip turns hashes in a constraints file into --require-hashes, which refuses the editable install.
    assert "--hash" not in DEV_LOCK.read_text(encoding="utf-8")


def test_both_locks_pin_the_same_versions() -> None:
    image, dev = pins(IMAGE_LOCK), pins(DEV_LOCK)
    build_only = {canonicalize_name(Requirement(r).name) for r in pyproject()["build-system"]["requires"]}
    assert set(image) - build_only <= set(dev)
    differ = {n: (v, dev[n][0]) for n, (v, _) in image.items() if n in dev and dev[n][0] != v}
    assert not differ, f"the image would run other versions than the tests: {differ}"


def test_the_dockerfile_and_make_install_use_the_locks() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install --require-hashes -r /tmp/requirements.lock" in dockerfile
    assert "--no-build-isolation" in dockerfile  # else pip fetches the newest setuptools, not the locked one
    assert "pip install --no-deps --no-index /wheels/*.whl" in dockerfile
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet -c requirements-dev.lock -e '.[test]'" in makefile
    assert re.search(r"^\$\(STAMP\): pyproject.toml requirements-dev.lock$", makefile, re.MULTILINE)
    dockerignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "requirements.lock" not in dockerignore and "secrets" in dockerignore
