"""``nnsam3d_download_sam BACKBONE [--cache-dir DIR]``: fetch an official SAM checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.model.backbones import BACKBONES
from nnsam3d.model.sam_checkpoints import download_sam_checkpoint
from nnsam3d.paths import SAM_CHECKPOINT_DIR_VARIABLE, sam_checkpoint_dir


def build_parser() -> argparse.ArgumentParser:
    official = [name for name, spec in BACKBONES.items() if spec.has_official_checkpoint]
    parser = command_parser(
        prog="nnsam3d_download_sam",
        description="Download SAM's official image-encoder checkpoint, verify its SHA-256 and keep it "
        "in the SAM checkpoint folder, where training finds it.",
    )
    parser.add_argument("backbone", choices=official, help="SAM variant (vit_b is the default backbone)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"folder to download into (default: ${SAM_CHECKPOINT_DIR_VARIABLE}, "
        "else ~/.cache/nnsam3d/sam_checkpoints)",
    )
    parser.add_argument(
        "--url", default=None, help="a mirror serving the identical file (default: Meta's official URL)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def download(args: argparse.Namespace) -> int:
    cache_dir = args.cache_dir if args.cache_dir is not None else sam_checkpoint_dir()
    print(download_sam_checkpoint(args.backbone, cache_dir, progress=not args.quiet, url=args.url))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), download, argv)


if __name__ == "__main__":
    sys.exit(main())
