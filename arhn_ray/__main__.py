import sys

from arhn_ray.cli import main

sys.exit(main())
