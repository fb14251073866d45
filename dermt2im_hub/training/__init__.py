"""Stage 2: DreamBooth-LoRA fine-tuning of Stable Diffusion with diffusers + peft + accelerate."""
