"""The `meg` command line: help, recipes, info, eval, and errors that say what to fix."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meg.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_everywhere(capsys):
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"], ["info", "--help"],
                 ["serve", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--set" in capsys.readouterr().out


def test_recipes_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("25gaussians", "digits", "kddcup99", "mnist", "tabular"):
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["train", "nope"], "no recipe 'nope'"),
    (["train", "digits", "--set", "train.bogus=1"], "no such key"),
    (["train", "tabular", "--out", "/tmp/x"], "needs a file"),
    (["train", "digits", "--out", "/tmp/bad name!"], "model name"),
    (["info", "/nonexistent"], "no manifest.json"),
])
def test_errors_name_what_to_fix(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_wrong_recipe_file_exits_2_naming_file_key_and_value(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text('[train]\nsteps = "many"\n')
    assert main(["train", str(path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"meg train: error: {path}: train.steps: expected int, got str 'many'" in err
    assert "Traceback" not in err


def test_a_run_dir_with_a_checkpoint_needs_resume(tmp_path, capsys):
    argv = ["train", "8gaussians", "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"),
            "--quiet", "--threads", "1", "--set", "train.steps=2", "--set", "data.n=200",
            "--set", "model.g_hidden=[8]", "--set", "model.e_hidden=[8]",
            "--set", "model.enc_hidden=[8]"]
    assert main(argv) == 0
    assert "8gaussians: threads: 1 (requested)" in capsys.readouterr().err
    assert main(argv) == 2
    assert "already holds checkpoint.pt: pass --resume" in capsys.readouterr().err
    assert main(argv + ["--resume", "--set", "train.steps=3"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert main(argv + ["--resume", "--set", "train.lr=0.5"]) == 2
    assert re.search(r"train.lr: [0-9.e-]+ -> 0.5", capsys.readouterr().err)


def test_info_and_eval(tiny_models_dir, capsys):
    assert main(["info", str(tiny_models_dir / "digits")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "digits" and info["data"]["shape"] == [1, 8, 8]
    assert main(["eval", str(tiny_models_dir / "digits")]) == 0
    ev = json.loads(capsys.readouterr().out)
    # The ONNX evaluation reproduces what training measured with torch.
    assert ev["metrics"]["auroc"] == pytest.approx(info["metrics"]["auroc"], abs=1e-4)


def test_console_script_trains_a_bundle(tmp_path):
    meg = Path(sys.executable).with_name("meg")
    cmd = [str(meg)] if meg.exists() else [sys.executable, "-m", "meg.cli"]
    out = tmp_path / "models" / "g8"
    proc = subprocess.run(
        cmd + ["train", "8gaussians", "--out", str(out), "--run-dir", str(tmp_path / "run"),
               "--quiet", "--seed", "3", "--set", "train.steps=3", "--set", "data.n=500",
               "--set", "model.g_hidden=[16]", "--set", "model.e_hidden=[16]",
               "--set", "model.enc_hidden=[16]"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=os.environ,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["steps"] == 3 and (out / "manifest.json").is_file()
