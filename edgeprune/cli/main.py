"""Command line entry point: `main` parses the arguments (`args`), quiets third-party logs
unless -v, runs the subcommand's handler (`commands`) and maps errors to exit codes.

Exit codes: 0 success, 2 a user error (one line on stderr: `edgeprune: error: ...`),
130 interrupted, 1 an internal error (one line, the traceback saved in a file). Machine-readable
output (`--json`) goes to stdout alone; progress and logs go to stderr.
"""
from __future__ import annotations

import os
import sys
import warnings


def _third_party_logs(verbose: bool) -> None:
    """onnxruntime's, llama.cpp's and transformers' own log lines are quiet unless -v (their
    errors still show; edgeprune reports what they would have said that matters)."""

    os.environ["EDGEPRUNE_VERBOSE"] = "1" if verbose else ""
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("ORT_LOGGING_LEVEL", "3")


# ---- parser -----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from .args import build_parser
    from .build_commands import cmd_bench, cmd_build, cmd_sweep, cmd_targets
    from .commands import cmd_eval, cmd_export, cmd_inspect, cmd_prune

    handlers = {"eval": cmd_eval, "prune": cmd_prune, "export": cmd_export, "build": cmd_build, "bench": cmd_bench,
                "inspect": cmd_inspect, "targets": cmd_targets, "sweep": cmd_sweep}
    try:
        args = build_parser(handlers).parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and argparse's one-line refusals (2)
        return int(e.code or 0)
    from ..errors import DataError, EdgePruneError

    _third_party_logs(getattr(args, "verbose", False))
    warnings.formatwarning = lambda msg, cat, *_a, **_k: f"edgeprune: warning: {msg}\n"
    from ..run import crash
    from ..io.guard import set_stage

    from .. import dist

    set_stage(None)
    try:
        return args.fn(args) or 0
    except EdgePruneError as e:  # rank 0 says a user error (the others skip the checks); a rank's
        if dist.is_writer() or isinstance(e, DataError):  # own windows may hold NaN: that rank says so
            print(f"edgeprune: error: {dist.tag()}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(crash.interrupted(args.cmd, args), file=sys.stderr)
        return 130
    except Exception as e:  # not foreseen: one line, the traceback in a file, exit 1
        if not dist.peer_lost(e):  # a collective that broke because another rank stopped: that rank said why
            print(crash.unexpected(e, args.cmd, args).replace("edgeprune: error: ", f"edgeprune: error: {dist.tag()}", 1),
                  file=sys.stderr)
        return 1
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(main())
