"""docs/deploy.md and the README's deployment section: every repository path and
kustomize directory they name exists, and every compose service they run is defined (so
their commands stay copy-pasteable)."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from deploy_support import REPO

DOC = REPO / "docs" / "deploy.md"
README = REPO / "README.md"


def _bash_blocks(text: str) -> str:
    """The shell code blocks of a markdown text."""
    return "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))


def _code() -> str:
    return _bash_blocks(DOC.read_text())


def _readme_deployment() -> str:
    text = README.read_text()
    start = text.index("## Deployment\n")
    return text[start : text.index("\n## ", start + 1)]


@pytest.mark.parametrize("text", [DOC.read_text(), _readme_deployment()], ids=["deploy.md", "README"])
def test_paths_exist(text):
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


def _compose_runs(code: str) -> int:
    """Check every `docker compose ... run` line names a defined service; count them."""
    services = set(yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"])
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
    return runs


def test_compose_services_exist():
    code = _code()
    assert _compose_runs(code) >= 3
    assert "docker compose --profile train run --rm trainer" in code
    assert "docker compose up -d --scale meg=3" in code
    assert "docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d" in code


def test_readme_deployment_commands():
    """The README's deployment section covers compose, training, scale-out, GPU and k8s."""
    section = _readme_deployment()
    code = _bash_blocks(section)
    assert _compose_runs(code) >= 2
    for needle in ("docker compose up -d", "docker compose --profile train run --rm trainer",
                   "--scale meg=", "docker-compose.gpu.yml", "localhost:3000"):
        assert needle in section, needle
    for d in re.findall(r"kubectl apply -k (\S+)", code):
        assert (REPO / d / "kustomization.yaml").exists(), d
