"""`make bench`: every benchmark, one after another (long: about an hour on 2 cores)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = [
    ["recipes.py", "--only", "kddcup99,25gaussians"],
    ["kdd.py"],
    ["toys.py"],
    ["mnist.py"],
    ["stacked_mnist.py"],
    ["serve.py", "--bundle", str(HERE.parent / "models" / "digits")],
]

for step in STEPS:
    print(f"==> bench/{' '.join(step)}", flush=True)
    subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], check=True)
