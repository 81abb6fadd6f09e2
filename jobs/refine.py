"""Entry point for `ray job submit`: refine a dataset on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/refine.py conf/qwen3-32b-a100x16.yaml

The driver joins the cluster (RAY_ADDRESS is set by the job server); everything after the
config path is a key=value override.
"""

import sys

from arhn_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["refine", *sys.argv[1:]]))
