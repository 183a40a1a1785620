"""``hil calibrate CONFIG --out DIR`` (or ``--report-only DIR``): measure the bench's optics and fit them
(:mod:`calibration.cli`)."""

from __future__ import annotations


def register(subparsers) -> None:
    from calibration.cli import add_arguments, run

    parser = subparsers.add_parser(
        "calibrate", help="calibrate the bench: sensor, display, geometry, PSFs and the mismatch fit",
        description="Run the calibration stages on the config's bench against its nominal optics; write "
                    "calibration.h5 (never over an earlier one) and a report (PNG, markdown, JSON) into --out. "
                    "Each stage is saved as it finishes in calibration.partial.h5: the same command after a stop "
                    "continues from the first missing stage. With --from SOURCE: redo only --stages, the others "
                    "copied from an earlier calibration (--stages fit opens no bench). "
                    "With --report-only DIR: rebuild the report of DIR/calibration.h5, opening no bench.")
    add_arguments(parser)
    parser.set_defaults(func=run)
