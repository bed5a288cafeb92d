"""CogVideoXPipeline with diffusers' name, from_pretrained, call signature and numbers, on the C core."""

import inspect
import math
import os
from dataclasses import dataclass

import numpy as np

from . import configuration
from ._dtypes import resolve_dtype
from ._files import read_json
from .models import AutoencoderKLCogVideoX, _standard_normal
from .t5 import T5EncoderModel
from .transformer import CogVideoXTransformer3DModel


@dataclass
class CogVideoXPipelineOutput:
    frames: object


def _component_classes():
    from . import schedulers, tokenizer

    return {
        "tokenizer": {"T5Tokenizer": tokenizer.T5Tokenizer, "T5TokenizerFast": tokenizer.T5Tokenizer},
        "text_encoder": {"T5EncoderModel": T5EncoderModel},
        "vae": {"AutoencoderKLCogVideoX": AutoencoderKLCogVideoX},
        "transformer": {"CogVideoXTransformer3DModel": CogVideoXTransformer3DModel},
        "scheduler": {
            "CogVideoXDDIMScheduler": schedulers.CogVideoXDDIMScheduler,
            "CogVideoXDPMScheduler": schedulers.CogVideoXDPMScheduler,
            "DDIMScheduler": schedulers.DDIMScheduler,
        },
    }


def _progress(total, disable):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; without it the loop just runs
        return None
    return tqdm(total=total, disable=disable)


class CogVideoXPipeline:
    """Text-to-video with CogVideoX: T5 prompt encoding, the transformer denoising loop with classifier-free
    guidance, and the VAE decode, exactly as diffusers' CogVideoXPipeline computes them."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        self.tokenizer, self.text_encoder, self.vae = tokenizer, text_encoder, vae
        self.transformer, self.scheduler = transformer, scheduler
        self.vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1) if vae else 8
        self.vae_scale_factor_temporal = vae.config.temporal_compression_ratio if vae else 4
        self.vae_scaling_factor_image = vae.config.scaling_factor if vae else 0.7
        self._progress_disable = False

    # ---- loading -------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, **kwargs):
        """A folder in diffusers layout: model_index.json naming tokenizer, text_encoder, vae, transformer and
        scheduler, each in its own subfolder. Components passed as keyword arguments are used as given."""
        root = configuration.component_dir(pretrained_model_name_or_path)
        index_path = os.path.join(root, "model_index.json")
        try:
            index = read_json(index_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"'{root}' has no model_index.json (not a diffusers pipeline folder)") from None
        dtype = resolve_dtype(torch_dtype)
        classes = _component_classes()
        parts = {}
        for name, known in classes.items():
            if name in kwargs:
                parts[name] = kwargs[name]
                continue
            entry = index.get(name)
            if not (isinstance(entry, list) and len(entry) == 2):
                raise ValueError(f"{index_path} does not name a '{name}' component")
            class_name = entry[1]
            if class_name not in known:
                raise ValueError(
                    f"{index_path}: {name} is a {class_name}, which cogvideo_c does not provide "
                    f"(expected one of {sorted(known)})"
                )
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"the '{name}' component folder is missing: {folder}")
            loader = known[class_name].from_pretrained
            parts[name] = loader(folder, torch_dtype=dtype) if "torch_dtype" in inspect.signature(loader).parameters \
                else loader(folder)  # fmt: skip
        return cls(**parts)

    # ---- diffusers' device and memory API ------------------------------------------------------------------

    def to(self, device=None, *args, **kwargs):
        if device is not None and not str(device).startswith("cpu"):
            raise ValueError(f"device {device!r}: this build runs on the CPU (the CUDA backend is not built yet)")
        return self

    def enable_model_cpu_offload(self, gpu_id=None, device=None):
        """On the CPU backend every component already lives in host memory: nothing to move."""

    def enable_sequential_cpu_offload(self, gpu_id=None, device=None):
        """On the CPU backend every component already lives in host memory: nothing to stream."""

    def set_progress_bar_config(self, disable=False, **kwargs):
        self._progress_disable = disable

    # ---- prompt encoding -----------------------------------------------------------------------------------

    def _t5_prompt_embeds(self, prompt, max_sequence_length):
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = self.tokenizer(
            prompt, padding="max_length", max_length=max_sequence_length, truncation=True, add_special_tokens=True,
            return_tensors="np",
        )["input_ids"]  # fmt: skip
        return self.text_encoder(ids)[0].astype(np.float32, copy=False)

    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance=True, num_videos_per_prompt=1,
                      prompt_embeds=None, negative_prompt_embeds=None, max_sequence_length=226, **kwargs):  # fmt: skip
        if prompt_embeds is None:
            prompt_embeds = self._t5_prompt_embeds(prompt, max_sequence_length)
        prompt_embeds = np.repeat(np.asarray(prompt_embeds, dtype=np.float32), num_videos_per_prompt, axis=0)
        batch = prompt_embeds.shape[0] // num_videos_per_prompt
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompt = batch * [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if prompt is not None and not isinstance(prompt, str) and len(negative_prompt) != batch:
                raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {batch} prompts")
            negative_prompt_embeds = self._t5_prompt_embeds(negative_prompt, max_sequence_length)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = np.repeat(
                np.asarray(negative_prompt_embeds, dtype=np.float32), num_videos_per_prompt, axis=0
            )
        return prompt_embeds, negative_prompt_embeds

    # ---- checks --------------------------------------------------------------------------------------------

    def check_inputs(self, prompt, height, width, num_frames, num_inference_steps, negative_prompt,
                     callback_on_step_end_tensor_inputs, prompt_embeds=None, negative_prompt_embeds=None,
                     output_type="pil"):  # fmt: skip
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        if num_frames < 1 or self._decoded_frames(num_frames) != num_frames:
            r = self.vae_scale_factor_temporal
            valid = sorted({self._decoded_frames(n) for n in range(max(1, num_frames - 2 * r), num_frames + 2 * r)})
            raise ValueError(
                f"num_frames {num_frames} does not map to whole latent frames: the VAE would decode "
                f"{self._decoded_frames(max(num_frames, 1))}; nearby valid counts are {valid}"
            )
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, "
                             f"but found {bad}")  # fmt: skip
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Cannot forward both `prompt` and `prompt_embeds`. Please make sure to only forward one.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`. Cannot leave both undefined.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `prompt` and `negative_prompt_embeds`.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `negative_prompt` and `negative_prompt_embeds`.")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                    f" got: `prompt_embeds` {np.shape(prompt_embeds)} != `negative_prompt_embeds` "
                    f"{np.shape(negative_prompt_embeds)}."
                )
        if prompt_embeds is not None and np.ndim(prompt_embeds) != 3:
            raise ValueError(f"prompt_embeds must be [batch, tokens, width], got shape {np.shape(prompt_embeds)}")
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type {output_type!r}: use 'pil', 'np' or 'latent' ('pt' needs torch)")

    def _decoded_frames(self, num_frames):
        """Frames the VAE decodes from the latents of num_frames (4(F-1)+1 for odd latent counts F, 4F for even,
        with the released VAEs), asked of the VAE itself."""
        f = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        return self.vae.decoded_frames(f)

    # ---- the call ------------------------------------------------------------------------------------------

    @property
    def guidance_scale(self):
        return self._guidance_scale

    def __call__(self, prompt=None, negative_prompt=None, height=None, width=None, num_frames=None,
                 num_inference_steps=50, timesteps=None, guidance_scale=6, use_dynamic_cfg=False,
                 num_videos_per_prompt=1, eta=0.0, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type="pil", return_dict=True, attention_kwargs=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length=226):  # fmt: skip
        tc = self.transformer.config
        height = height or tc.sample_height * self.vae_scale_factor_spatial
        width = width or tc.sample_width * self.vae_scale_factor_spatial
        num_frames = num_frames or tc.sample_frames
        num_videos_per_prompt = 1  # diffusers ignores the argument here too
        if timesteps is not None:
            raise ValueError("custom `timesteps` are not supported by the CogVideoX schedulers' set_timesteps")
        self.check_inputs(prompt, height, width, num_frames, num_inference_steps, negative_prompt,
                          callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds,
                          output_type)  # fmt: skip
        self._guidance_scale = guidance_scale
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else len(prompt_embeds)
        do_cfg = guidance_scale > 1.0

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds, negative_prompt_embeds,
            max_sequence_length,
        )  # fmt: skip
        if do_cfg:
            prompt_embeds = np.concatenate([negative_prompt_embeds, prompt_embeds], axis=0)  # unconditional first

        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.timesteps
        latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        additional_frames = 0
        if tc.patch_size_t is not None and latent_frames % tc.patch_size_t != 0:
            additional_frames = tc.patch_size_t - latent_frames % tc.patch_size_t
            num_frames += additional_frames * self.vae_scale_factor_temporal
        latents = self.prepare_latents(batch_size * num_videos_per_prompt, tc.in_channels, num_frames, height, width,
                                       generator, latents)  # fmt: skip

        step_params = inspect.signature(self.scheduler.step).parameters
        extra_step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}
        image_rotary_emb = None
        if tc.use_rotary_positional_embeddings:
            image_rotary_emb = self.transformer.rotary_positional_embeddings(
                height, width, latents.shape[1], vae_scale_factor_spatial=self.vae_scale_factor_spatial
            )
        is_dpm = type(self.scheduler).__name__ == "CogVideoXDPMScheduler"
        bar = _progress(len(timesteps), self._progress_disable)
        old_pred_original_sample = None
        for i, t in enumerate(timesteps):
            latent_model_input = np.concatenate([latents, latents]) if do_cfg else latents
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            timestep = np.full((latent_model_input.shape[0],), t, dtype=np.int64)
            noise_pred = self.transformer(
                hidden_states=latent_model_input, encoder_hidden_states=prompt_embeds, timestep=timestep,
                image_rotary_emb=image_rotary_emb, return_dict=False,
            )[0].astype(np.float32, copy=False)  # fmt: skip
            if use_dynamic_cfg:
                # the raw timestep value in a Python double, as diffusers computes it (spec: reproduce literally)
                q = ((num_inference_steps - int(t)) / num_inference_steps) ** 5.0
                self._guidance_scale = 1 + guidance_scale * ((1 - math.cos(math.pi * q)) / 2)
            if do_cfg:
                uncond, text = np.split(noise_pred, 2)
                noise_pred = uncond + np.float32(self._guidance_scale) * (text - uncond)
            if is_dpm:
                latents, old_pred_original_sample = self.scheduler.step(
                    noise_pred, old_pred_original_sample, t, timesteps[i - 1] if i > 0 else None, latents,
                    **extra_step_kwargs, return_dict=False,
                )  # fmt: skip
            else:
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
            latents = np.asarray(latents, dtype=np.float32)
            if callback_on_step_end is not None:
                local = {"latents": latents, "prompt_embeds": prompt_embeds,
                         "negative_prompt_embeds": negative_prompt_embeds}  # fmt: skip
                kw = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, i, t, kw) or {}
                latents = outputs.pop("latents", latents)
                prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()

        if output_type == "latent":
            video = latents
        else:
            video = self.postprocess_video(self.decode_latents(latents[:, additional_frames:]), output_type)
        return CogVideoXPipelineOutput(frames=video) if return_dict else (video,)

    def prepare_latents(self, batch_size, num_channels_latents, num_frames, height, width, generator=None,
                        latents=None):  # fmt: skip
        shape = (
            batch_size, (num_frames - 1) // self.vae_scale_factor_temporal + 1, num_channels_latents,
            height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial,
        )  # fmt: skip
        if latents is None:
            if isinstance(generator, list):
                if len(generator) != batch_size:
                    raise ValueError(f"{len(generator)} generators for a batch of {batch_size}")
                latents = np.concatenate([_standard_normal((1, *shape[1:]), g) for g in generator])
            else:
                latents = _standard_normal(shape, generator)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"latents must have shape {shape}, got {latents.shape}")
        return latents * np.float32(self.scheduler.init_noise_sigma)

    def decode_latents(self, latents):
        latents = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4))  # BFCHW -> BCFHW
        latents = np.float32(1 / self.vae_scaling_factor_image) * latents
        return self.vae.decode(latents).sample

    @staticmethod
    def postprocess_video(video, output_type="np"):
        """[B, 3, F, H, W] in [-1, 1] -> [B, F, H, W, 3] in [0, 1] ("np") or lists of PIL images ("pil")."""
        frames = np.clip(video * np.float32(0.5) + np.float32(0.5), 0.0, 1.0).transpose(0, 2, 3, 4, 1)
        if output_type == "np":
            return np.ascontiguousarray(frames, dtype=np.float32)
        from PIL import Image

        as_bytes = np.round(frames * 255).astype(np.uint8)
        return [[Image.fromarray(f) for f in item] for item in as_bytes]
