"""
The CogVideo repository's text-to-video demo (inference/cli_demo.py), as a drop-in script: the only change from the
diffusers version is the import line. It runs on the CPU backend without PyTorch.

    python python/cli_demo.py --prompt "A girl riding a bike." --model_path THUDM/CogVideoX-2b-local-folder
    python python/cli_demo.py --prompt "A girl riding a bike."          # no checkpoint: the embedded tiny model
"""

import argparse
import tempfile

# from diffusers import CogVideoXPipeline, CogVideoXDDIMScheduler, CogVideoXDPMScheduler
# from diffusers.utils import export_to_video
from cogvideo_c import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline, export_to_video


def generate_video(prompt, model_path, output_path="./output.mp4", num_inference_steps=50, guidance_scale=6.0,
                   num_videos_per_prompt=1, dtype="float32", seed=42, num_frames=None, height=None, width=None,
                   scheduler="dpm"):  # fmt: skip
    pipe = CogVideoXPipeline.from_pretrained(model_path, torch_dtype=dtype)
    scheduler_cls = CogVideoXDPMScheduler if scheduler == "dpm" else CogVideoXDDIMScheduler
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.enable_sequential_cpu_offload()
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    video = pipe(
        prompt=prompt,
        num_videos_per_prompt=num_videos_per_prompt,
        num_inference_steps=num_inference_steps,
        num_frames=num_frames,
        height=height,
        width=width,
        use_dynamic_cfg=True,
        guidance_scale=guidance_scale,
        generator=seed,
    ).frames[0]
    export_to_video(video, output_path, fps=8)
    return output_path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Generate a video from a text prompt using CogVideoX")
    parser.add_argument("--prompt", type=str, required=True, help="The description of the video to be generated")
    parser.add_argument("--model_path", type=str, default=None, help="A CogVideoX checkpoint folder (diffusers layout)")
    parser.add_argument("--output_path", type=str, default="./output.mp4", help="The path to save the video")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=6.0)
    parser.add_argument("--num_videos_per_prompt", type=int, default=1)
    parser.add_argument("--num_frames", type=int, default=None)
    parser.add_argument("--dtype", type=str, default="float32", help="float32, float16 or bfloat16")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scheduler", choices=["dpm", "ddim"], default="dpm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path
        if model_path is None:
            from cogvideo_c.tiny import make_tiny_pipeline

            model_path = make_tiny_pipeline(tmp)
        path = generate_video(args.prompt, model_path, args.output_path, args.num_inference_steps,
                              args.guidance_scale, args.num_videos_per_prompt, args.dtype, args.seed,
                              args.num_frames, scheduler=args.scheduler)  # fmt: skip
    print(f"wrote {path}")
