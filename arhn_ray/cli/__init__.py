"""``arhn-ray``: the command line (arguments.py: each command's options; commands.py: what each does)."""

from __future__ import annotations

import logging
import sys

from arhn_ray.cli.arguments import parser
from arhn_ray.cli.console import summary
from arhn_ray.config import ConfigError

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
    except KeyboardInterrupt:  # finished parts are written and kept: the same command goes on from them
        print(f"\narhn-ray: interrupted: rerun the same command to resume{RESUMES.get(args.command, '')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.verbose:
            raise
        network = network_error(e)
        if network is not None:
            print(f"arhn-ray: network: {one_line(network)}; check the connection (a proxy, HF_ENDPOINT), or stage "
                  "the files and read them locally (HF_HUB_OFFLINE=1)", file=sys.stderr)  # fmt: skip
            return EXIT_NETWORK
        print(f"arhn-ray: {args.command} failed: {one_line(e)}\n  arhn-ray -v {args.command} ... shows the traceback",
              file=sys.stderr)  # fmt: skip
        return 1


EXIT_NETWORK, EXIT_INTERRUPTED = 6, 130
RESUMES = {"refine": " (finished parts are kept)", "evaluate": " (written embeddings and examples are kept)"}


def one_line(e: BaseException, width: int = 300) -> str:
    """``Type: first line of the message``, cut: what a terminal shows instead of a traceback."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if len(line) <= width else line[: width - 3] + "..."


def network_error(e: BaseException) -> BaseException | None:
    """The network or Hub error behind ``e`` (itself or a cause), or None: a connection refused or
    reset, a DNS failure, a timeout, any HTTP error the Hub library raises (a proxy's 404, a 5xx after
    its retries), whether or not it carries an error code."""
    kinds: list[type] = [ConnectionError, TimeoutError]
    for module, names in (("httpx", ("TransportError", "HTTPStatusError")),
                          ("requests.exceptions", ("ConnectionError", "Timeout", "HTTPError")),
                          ("huggingface_hub.errors", ("HfHubHTTPError", "OfflineModeIsEnabled", "LocalEntryNotFoundError")),
                          ("urllib3.exceptions", ("HTTPError",)), ("socket", ("gaierror",))):  # fmt: skip
        mod = sys.modules.get(module)  # a library not loaded raised nothing
        kinds += [getattr(mod, n) for n in names if mod is not None and isinstance(getattr(mod, n, None), type)]
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, tuple(kinds)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
