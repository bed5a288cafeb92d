"""
The CogVideo repository's demo (inference/cli_demo.py: text-to-video, image-to-video and video-to-video, with an
optional LoRA), as a drop-in script. The changes from the diffusers version: the import lines, the dtype given as a
string and the seed as an int (there is no torch to make a torch.dtype or a torch.Generator; cogvideo_c takes those
too when torch happens to be installed). It runs on the CPU backend without PyTorch.

    python python/cli_demo.py --prompt "A girl riding a bike." --model_path THUDM/CogVideoX-2b-local-folder
    python python/cli_demo.py --prompt "A girl riding a bike." --generate_type i2v --image_or_video_path girl.png \
        --model_path THUDM/CogVideoX-5b-I2V-local-folder
    python python/cli_demo.py --prompt "A girl riding a bike." --generate_type v2v --image_or_video_path in.mp4 \
        --model_path THUDM/CogVideoX-5b-local-folder
    python python/cli_demo.py --prompt "A girl riding a bike."          # no checkpoint: the embedded tiny model

Without --model_path the embedded tiny random-weight pipeline is used (an image-to-video one for i2v); with i2v or
v2v and no --image_or_video_path, a generated test image / video stands in.
"""

import argparse
import logging
import os
import tempfile
from typing import Literal

# from diffusers import (
#     CogVideoXDPMScheduler,
#     CogVideoXImageToVideoPipeline,
#     CogVideoXPipeline,
#     CogVideoXVideoToVideoPipeline,
# )
# from diffusers.utils import export_to_video, load_image, load_video
from cogvideo_c import (
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXVideoToVideoPipeline,
    export_to_video,
    load_image,
    load_video,
)

logging.basicConfig(level=logging.INFO)

# Recommended resolution for each model (height, width)
RESOLUTION_MAP = {
    # cogvideox1.5-*
    "cogvideox1.5-5b-i2v": (768, 1360),
    "cogvideox1.5-5b": (768, 1360),
    # cogvideox-*
    "cogvideox-5b-i2v": (480, 720),
    "cogvideox-5b": (480, 720),
    "cogvideox-2b": (480, 720),
}


def generate_video(
    prompt: str,
    model_path: str,
    lora_path: str = None,
    lora_rank: int = 128,
    num_frames: int = 81,
    width: int = None,
    height: int = None,
    output_path: str = "./output.mp4",
    image_or_video_path: str = "",
    num_inference_steps: int = 50,
    guidance_scale: float = 6.0,
    num_videos_per_prompt: int = 1,
    dtype="bfloat16",
    generate_type: str = Literal["t2v", "i2v", "v2v"],  # i2v: image to video, v2v: video to video
    seed: int = 42,
    fps: int = 16,
):
    """Generates a video from the prompt (and the image or video) and saves it to output_path, as the CogVideo demo.

    lora_path: a folder with pytorch_lora_weights.safetensors, fused at 1 / lora_rank as the demo does. height and
    width default to the model's recommended resolution (RESOLUTION_MAP; a folder of another name: the model's own
    sample size). num_frames None: the model's sample_frames."""
    image = None
    video = None

    model_name = os.path.basename(os.path.normpath(model_path)).lower()
    desired_resolution = RESOLUTION_MAP.get(model_name)
    if desired_resolution is None:
        logging.info(f"{model_name} is not a released model name: the model's own sample size is used by default")
    elif width is None or height is None:
        height, width = desired_resolution
        logging.info(f"\033[1mUsing default resolution {desired_resolution} for {model_name}\033[0m")
    elif (height, width) != desired_resolution:
        if generate_type == "i2v":
            # For i2v models, use user-defined width and height
            logging.warning(
                f"\033[1;31mThe width({width}) and height({height}) are not recommended for {model_name}. "
                f"The best resolution is {desired_resolution}.\033[0m"
            )
        else:
            # Otherwise, use the recommended width and height
            logging.warning(
                f"\033[1;31m{model_name} is not supported for custom resolution. Setting back to default "
                f"resolution {desired_resolution}.\033[0m"
            )
            height, width = desired_resolution

    if generate_type == "i2v":
        pipe = CogVideoXImageToVideoPipeline.from_pretrained(model_path, torch_dtype=dtype)
        image = load_image(image=image_or_video_path)
    elif generate_type == "t2v":
        pipe = CogVideoXPipeline.from_pretrained(model_path, torch_dtype=dtype)
    else:
        pipe = CogVideoXVideoToVideoPipeline.from_pretrained(model_path, torch_dtype=dtype)
        video = load_video(image_or_video_path)

    # If you're using with lora, add this code
    if lora_path:
        pipe.load_lora_weights(lora_path, weight_name="pytorch_lora_weights.safetensors", adapter_name="test_1")
        pipe.fuse_lora(components=["transformer"], lora_scale=1 / lora_rank)

    pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")

    pipe.enable_sequential_cpu_offload()
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()

    if generate_type == "i2v":
        video_generate = pipe(
            height=height,
            width=width,
            prompt=prompt,
            image=image,
            num_videos_per_prompt=num_videos_per_prompt,
            num_inference_steps=num_inference_steps,
            num_frames=num_frames,
            use_dynamic_cfg=True,
            guidance_scale=guidance_scale,
            generator=seed,
        ).frames[0]
    elif generate_type == "t2v":
        video_generate = pipe(
            height=height,
            width=width,
            prompt=prompt,
            num_videos_per_prompt=num_videos_per_prompt,
            num_inference_steps=num_inference_steps,
            num_frames=num_frames,
            use_dynamic_cfg=True,
            guidance_scale=guidance_scale,
            generator=seed,
        ).frames[0]
    else:
        video_generate = pipe(
            height=height,
            width=width,
            prompt=prompt,
            video=video,
            num_videos_per_prompt=num_videos_per_prompt,
            num_inference_steps=num_inference_steps,
            use_dynamic_cfg=True,
            guidance_scale=guidance_scale,
            generator=seed,
        ).frames[0]
    export_to_video(video_generate, output_path, fps=fps)
    return output_path


def _stand_in_input(generate_type, folder):
    """A smooth test image (i2v) or a 9-frame test video (v2v) for runs without --image_or_video_path."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64] / 63.0
    frames = [np.stack([x, y, np.full_like(x, k / 8)], axis=-1) for k in range(9)]
    if generate_type == "i2v":
        path = os.path.join(folder, "input.png")
        Image.fromarray(np.round(frames[0] * 255).astype(np.uint8)).save(path)
        return path
    return export_to_video(frames, os.path.join(folder, "input.mp4"), fps=8)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Generate a video from a text prompt using CogVideoX")
    parser.add_argument("--prompt", type=str, required=True, help="The description of the video to be generated")
    parser.add_argument("--image_or_video_path", type=str, default=None, help="The path of the image or video")
    parser.add_argument("--model_path", type=str, default=None, help="A CogVideoX checkpoint folder (diffusers layout)")
    parser.add_argument("--lora_path", type=str, default=None, help="The path of the LoRA weights to be used")
    parser.add_argument("--lora_rank", type=int, default=128, help="The rank of the LoRA weights")
    parser.add_argument("--output_path", type=str, default="./output.mp4", help="The path to save the video")
    parser.add_argument("--guidance_scale", type=float, default=6.0, help="The scale for classifier-free guidance")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="Inference steps")
    parser.add_argument("--num_frames", type=int, default=None, help="Number of frames to generate")
    parser.add_argument("--width", type=int, default=None, help="The width of the generated video")
    parser.add_argument("--height", type=int, default=None, help="The height of the generated video")
    parser.add_argument("--fps", type=int, default=16, help="The frames per second for the generated video")
    parser.add_argument("--num_videos_per_prompt", type=int, default=1, help="Number of videos to generate per prompt")
    parser.add_argument("--generate_type", type=str, default="t2v", help="The type of video generation")
    parser.add_argument("--dtype", type=str, default="float32", help="float32, float16 or bfloat16")
    parser.add_argument("--seed", type=int, default=42, help="The seed for reproducibility")

    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path
        if model_path is None:
            from cogvideo_c.tiny import make_tiny_pipeline

            model_path = make_tiny_pipeline(os.path.join(tmp, "tiny"), image_to_video=args.generate_type == "i2v")
        source = args.image_or_video_path
        if args.generate_type in ("i2v", "v2v") and not source:
            source = _stand_in_input(args.generate_type, tmp)
        path = generate_video(
            prompt=args.prompt,
            model_path=model_path,
            lora_path=args.lora_path,
            lora_rank=args.lora_rank,
            output_path=args.output_path,
            num_frames=args.num_frames,
            width=args.width,
            height=args.height,
            image_or_video_path=source,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            num_videos_per_prompt=args.num_videos_per_prompt,
            dtype=args.dtype,
            generate_type=args.generate_type,
            seed=args.seed,
            fps=args.fps,
        )
    print(f"wrote {path}")
