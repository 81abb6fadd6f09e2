"""``arhn-ray``: the command line (arguments.py: each command's options; commands.py: what each does)."""

from __future__ import annotations

import logging
import sys

from arhn_ray.cli.arguments import parser
from arhn_ray.config import ConfigError
from arhn_ray.console import summary

__all__ = ["main", "parser", "summary"]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # key=value overrides may also follow the options (`evaluate OUT --eval DIR key=value`)
    if extra and (not hasattr(args, "overrides") or not all("=" in e and not e.startswith("-") for e in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if isinstance(getattr(args, "eval", None), list):  # --eval DIR [DIR ...] key=value: the overrides follow the folders
        args.overrides = [*args.overrides, *(e for e in args.eval if "=" in e)]
        args.eval = [e for e in args.eval if "=" not in e]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError) as e:  # a missing input, repository or revision; a refused token
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
