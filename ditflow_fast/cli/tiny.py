"""``python -m ditflow_fast.cli.tiny OUT``: a tiny random CogVideoX model and a test video for a CPU smoke run
(``ditflow_fast.families.cogvideox.tiny.write_tiny_assets``)."""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from ..families.cogvideox.tiny import write_tiny_assets

    p = argparse.ArgumentParser(prog="python -m ditflow_fast.cli.tiny",
                                description="write a tiny CogVideoX model and a test video")
    p.add_argument("out")
    p.add_argument("--no-rope", action="store_true", help="2B-like: additive positional table, DDIM")
    p.add_argument("--text-encoder", action="store_true", help="add a tiny T5 + tokenizer (needs transformers)")
    a = p.parse_args(argv)
    out = write_tiny_assets(a.out, rope=not a.no_rope, text_encoder=a.text_encoder)
    print(f"wrote {out / 'model'} and {out / 'video.mp4'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
