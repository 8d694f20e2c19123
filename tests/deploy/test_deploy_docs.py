"""docs/deploy.md: every repository path and kustomize directory it names exists, and
every compose service it runs is defined (so its commands stay copy-pasteable)."""

from __future__ import annotations

import re
import shlex

import yaml
from deploy_support import REPO

DOC = REPO / "docs" / "deploy.md"


def _code() -> str:
    """The shell code blocks of the document."""
    return "\n".join(re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S))


def test_paths_exist():
    text = DOC.read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|docs|tests)/[\w./-]*[\w]|docker-compose[\w.]*\.yml|\.dockerignore)", text))
    assert paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing


def test_kustomize_dirs_exist():
    dirs = set(re.findall(r"kubectl (?:apply|delete) -k (\S+)", _code()))
    assert {"deploy/k8s/base", "deploy/k8s/overlays/gpu", "deploy/k8s/training"} <= dirs
    for d in dirs:
        assert (REPO / d / "kustomization.yaml").exists(), d


# `docker compose run` options that take a value (the service name comes after them).
RUN_VALUE_OPTS = {"-e", "--env", "-v", "--volume", "--entrypoint", "-w", "--workdir", "-u",
                  "--user", "--name", "-p", "--publish", "-l", "--label"}


def test_compose_services_exist():
    services = set(yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"])
    code = _code()
    runs = 0
    for line in re.findall(r"docker compose [^\n]*", code):
        tokens = shlex.split(line.split("#")[0])
        if "run" not in tokens:
            continue
        rest = tokens[tokens.index("run") + 1 :]
        while rest and rest[0].startswith("-"):
            rest = rest[2:] if rest[0] in RUN_VALUE_OPTS else rest[1:]
        assert rest and rest[0] in services, line
        runs += 1
    assert runs >= 3
    assert "docker compose --profile train run --rm trainer" in code
    assert "docker compose up -d --scale meg=3" in code
    assert "docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d" in code
