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
    p.add_argument("--i2v", action="store_true", help="a CogVideoX-5B-I2V-like model (image latents in channels) "
                   "and a first frame, image.png, for --image")
    a = p.parse_args(argv)
    if a.i2v and a.no_rope:
        p.error("--i2v: the I2V models use RoPE; drop --no-rope")
    out = write_tiny_assets(a.out, rope=not a.no_rope, text_encoder=a.text_encoder, i2v=a.i2v)
    print(f"wrote {out / 'model'} and {out / 'video.mp4'}" + (f" and {out / 'image.png'}" if a.i2v else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
