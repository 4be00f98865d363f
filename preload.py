"""Command-line flags of the extension, added by the WebUI before it parses its arguments."""

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sd-aws-api-url", type=str, default=None,
                        help="sd-aws: middleware API URL (overrides the setting)")
    parser.add_argument("--sd-aws-api-key", type=str, default=None,
                        help="sd-aws: middleware API key (overrides the saved key)")
