"""deploy/docker/Dockerfile{,.gpu} and the build context (.dockerignore).

There is no Docker daemon here, so the images are not built; instead the Dockerfiles
are parsed (continuation lines, stages, ARG defaults) and checked for what the
deployment relies on, and .dockerignore is evaluated with Docker's own matching rules
(moby/patternmatcher: `**`, `*`, `?`, `!` exceptions, last match wins, a pattern
matching a parent directory excludes everything below it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERFILE_GPU = DEPLOY / "docker" / "Dockerfile.gpu"


# ------------------------------------------------------------------ Dockerfile parsing
@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, rest = line.strip().partition(" ")
        op, rest = op.upper(), " ".join(rest.split())
        if op == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
            name = rest.split()[2] if len(rest.split()) >= 3 and rest.split()[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert op == "ARG", f"{path}: only ARG may precede the first FROM, got {op}"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


def _exec_form(arg: str) -> list[str]:
    return json.loads(arg) if arg.startswith("[") else shlex.split(arg)


def _final_user(stage: Stage) -> str:
    users = stage.all("USER")
    assert users, f"stage {stage.name}: no USER, it would run as root"
    return users[-1]


def _check_runtime(stage: Stage) -> None:
    user = _final_user(stage)
    assert user.split(":")[0] not in {"0", "root"}, f"runs as {user}"
    (health,) = stage.all("HEALTHCHECK")
    assert "/readyz" in health and "curl" not in health and "urllib" in health
    assert _exec_form(stage.all("ENTRYPOINT")[-1]) + _exec_form(stage.all("CMD")[-1]) == [
        "meg", "serve", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
    exposed = " ".join(stage.all("EXPOSE")).split()
    assert "8000" in exposed and "8001" in exposed  # HTTP, and V2 gRPC when MEG_GRPC_PORT=8001
    env = " ".join(stage.all("ENV"))
    assert "MEG_MODELS_DIR=/models" in env


def _pip_installs(stages: list[Stage]) -> list[str]:
    return [arg for s in stages for arg in s.all("RUN") if "pip install" in arg]


# ---------------------------------------------------------------------------- CPU
def test_cpu_dockerfile():
    args, stages = parse(DOCKERFILE)
    assert len(stages) >= 2, "multi-stage build expected"
    assert args.get("PYTHON_VERSION") == "3.11"
    assert all(s.base == "python:3.11-slim" or s.base in {t.name for t in stages} for s in stages)
    final = stages[-1]
    assert final.name == "runtime"
    _check_runtime(final)
    installs = _pip_installs(stages)
    torch = [i for i in installs if "torch==" in i]
    assert torch and all("download.pytorch.org/whl/cpu" in i for i in torch)
    assert any(re.search(r"""["']?\.\[cpu\]["']?""", i) for i in installs)
    assert not any("gpu" in i for i in installs), "the CPU image must not install onnxruntime-gpu"
    # The trainer target: same base, training extras, `meg train` by default.
    (trainer,) = [s for s in stages if s.name == "trainer"]
    assert any(".[cpu,train]" in i for i in installs)
    assert _final_user(trainer).split(":")[0] not in {"0", "root"}
    assert _exec_form(trainer.all("ENTRYPOINT")[-1]) == ["meg"]
    assert _exec_form(trainer.all("CMD")[-1])[:2] == ["train", "digits"]


# ---------------------------------------------------------------------------- GPU
def test_gpu_dockerfile():
    args, stages = parse(DOCKERFILE_GPU)
    cuda = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn-runtime-ubuntu2[24]\.04", cuda), cuda
    assert stages[0].base == cuda
    final = stages[-1]
    assert final.name == "runtime"
    _check_runtime(final)
    assert "MEG_DEVICE=cuda" in " ".join(final.all("ENV"))
    installs = _pip_installs(stages)
    torch = [i for i in installs if "torch==" in i]
    assert torch and all("download.pytorch.org/whl/${TORCH_CUDA}" in i for i in torch)
    assert re.fullmatch(r"cu1\d\d", next(a for o, a in stages[1].instructions
                                         if o == "ARG" and a.startswith("TORCH_CUDA=")).split("=")[1])
    extras = [m for i in installs for m in re.findall(r"\.\[([\w,]+)\]", i)]
    assert extras and all("gpu" in e.split(",") and "cpu" not in e.split(",") for e in extras)
    # Never the CPU onnxruntime package next to onnxruntime-gpu (same module), and the
    # build fails if a dependency drags it in.
    packages = [re.split(r"[=<>~!\[]", tok)[0] for i in installs
                for seg in re.split(r"&&|;", i) if "pip install" in seg
                for tok in shlex.split(seg.split("pip install", 1)[1]) if not tok.startswith("-")]
    assert "onnxruntime" not in packages, packages
    assert all("pip show onnxruntime" in i for i in installs if ".[gpu" in i)


# -------------------------------------------------------------------- .dockerignore
def _pattern_regex(pattern: str) -> re.Pattern:
    """moby/patternmatcher's translation of one .dockerignore pattern."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def load_dockerignore(path: Path = REPO / ".dockerignore") -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(pat)))
    return rules


def excluded(rules, relpath: str) -> bool:
    """Whether Docker leaves `relpath` (a file, slash-separated) out of the context."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result


@pytest.fixture(scope="module")
def rules():
    return load_dockerignore()


LEFT_OUT = [
    ".venv/bin/python", ".git/config", "models/digits/manifest.json", "models/digits/energy.onnx",
    "runs/digits/checkpoint.pt", "data/kddcup.data_10_percent.gz", "data/mnist/train.idx",
    "out/x.png", "bench/results/r.json", "shared/data/x.csv", "tests/deploy/conftest.py",
    "docs/deploy.md", "deploy/docker/Dockerfile", ".pytest_cache/v/x", "meg.egg-info/PKG-INFO",
    "service/__pycache__/main.cpython-311.pyc", "training/data/__pycache__/kdd.cpython-311.pyc",
    "service/model.onnx", "training/generator.pt2", "training/ckpt.pt", "training/data/kdd.csv",
    "training/data/x.parquet", "training/data/mnist.npz", "training/data/raw.gz",
]
KEPT = [
    "pyproject.toml", "README.md", "service/__init__.py", "service/main.py",
    "meg/cli.py", "training/data/__init__.py", "training/data/digits.py",
    "training/recipes/digits.toml",
]


def test_pattern_translation():
    assert _pattern_regex("**/*.onnx").match("a/b/c.onnx")
    assert _pattern_regex("**/*.onnx").match("c.onnx")
    assert not _pattern_regex("*").match("a/b")
    assert _pattern_regex("data").match("data") and not _pattern_regex("data").match("training/data")


@pytest.mark.parametrize("path", LEFT_OUT)
def test_context_leaves_out(rules, path):
    assert excluded(rules, path), f"{path} would be sent to the Docker build context"


@pytest.mark.parametrize("path", KEPT)
def test_context_keeps(rules, path):
    assert not excluded(rules, path), f"{path} is needed by `pip install .` but left out"


def build_context(rules) -> list[str]:
    """The files of this checkout that `docker build .` would send."""
    sent = []
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", "node_modules"}]
        for f in files:
            rel = f if rel_root == "." else f"{rel_root}/{f}"
            if not excluded(rules, rel):
                sent.append(rel)
    return sent


def test_context_of_this_checkout(rules):
    """Walk the real checkout: only the package sources and project metadata go in."""
    sent = build_context(rules)
    top = {p.split("/")[0] for p in sent}
    assert top <= {"pyproject.toml", "README.md", "LICENSE", "meg", "service", "training"}, sorted(top)
    assert "pyproject.toml" in sent
    weights = [p for p in sent if re.search(r"\.(onnx|pt2?|pth|ckpt|npz|npy|csv|parquet|gz)$", p)]
    assert not weights, weights


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE_GPU], ids=lambda p: p.name)
def test_copied_paths_are_in_the_context(rules, dockerfile):
    _, stages = parse(dockerfile)
    for stage in stages:
        for arg in stage.all("COPY"):
            if arg.startswith("--from"):
                continue
            *sources, _dest = arg.split()
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                probe = src if (REPO / src).is_file() else f"{src}/__init__.py"
                assert not excluded(rules, probe), f"COPY {src}: excluded by .dockerignore"


def test_context_is_enough_to_build_the_package(rules, tmp_path):
    """`pip install .` in the image sees only the build context: build the wheel from
    exactly those files (offline) and check it has the server, the CLI and the recipes."""
    pytest.importorskip("setuptools", reason="offline wheel build needs setuptools in the venv")
    ctx = tmp_path / "context"
    for rel in build_context(rules):
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, ctx / rel)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--quiet", "-w", str(tmp_path / "dist"), str(ctx)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("meg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"service/main.py", "meg/cli.py", "training/recipes/digits.toml"} <= names
    assert not [n for n in names if n.startswith("tests/")]

