"""``transfer --dry-run``: the predicted peak GPU memory of a run, from the model's configs (no weights)."""

from __future__ import annotations


def dry_run(model: str, cfg, offload: str) -> int:
    from ..families import detect, preset_family

    fam = preset_family(model) or detect(model)
    if fam.name == "wan":
        from ..families.wan.memory import dry_run_table

        print(dry_run_table(model, frames=cfg.frames, height=cfg.height, width=cfg.width,
                            guidance_blocks=cfg.guidance_blocks, dtype=cfg.dtype, opt_mode=cfg.opt_mode,
                            checkpointing=cfg.gradient_checkpointing, offload=offload,
                            offload_activations=cfg.offload_activations, ffn_chunks=cfg.ffn_chunks))
        return 0
    from ..families.cogvideox import memory

    mc = memory.config_for(model)
    d = fam.defaults(mc)
    frames, height, width = cfg.frames or d["frames"], cfg.height or d["height"], cfg.width or d["width"]
    fam.check_frames(frames)
    block = max(cfg.guidance_blocks or d["guidance_blocks"])
    b = 4 if (cfg.dtype or d["dtype"]) == "float32" else 2
    est = memory.estimate(mc, frames=frames, height=height, width=width, guidance_block=block,
                          bytes_per_elem=b, opt_mode=cfg.opt_mode, checkpointing=cfg.gradient_checkpointing,
                          vae_offload=cfg.cpu_offload or offload != "none")
    print(f"{model}: {frames} frames at {height}x{width}, guidance block {block}, {b}-byte "
          f"elements, opt-mode {cfg.opt_mode}, checkpointing {'on' if cfg.gradient_checkpointing else 'off'}")
    print(est.table())
    print("(derivation: docs/memory.md; the T5 encoder runs before the loop and is offloaded)")
    return 0
