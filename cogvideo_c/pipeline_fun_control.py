"""CogVideoXFunControlPipeline (the CogVideoX-Fun control models) with diffusers' names, call signature and numbers,
on the shared denoising loop of CogVideoXPipeline: the control video's latents are the conditioning the loop
concatenates to every step's input along the channels."""

import numpy as np

from .pipeline import CogVideoXPipeline
from .pipeline_video2video import _VideoConditioned


class CogVideoXFunControlPipeline(_VideoConditioned, CogVideoXPipeline):
    """Controlled text-to-video with a CogVideoX-Fun control model (e.g. alibaba-pai/CogVideoX-Fun-V1.1-5b-Pose),
    exactly as diffusers' CogVideoXFunControlPipeline computes it: the control video (poses, edges, depth...) is
    encoded by the VAE (the posterior's mode, x scaling_factor) and concatenated to the noisy latents along the
    channels at every step, so the transformer's in_channels are twice the VAE's latent channels.

    Args: as CogVideoXPipeline, with a Fun-Control transformer; the scheduler is stepped as DDIM (diffusers'
    examples use DDIMScheduler; CogVideoXDDIMScheduler works too). diffusers steps CogVideoXDPMScheduler with the
    DDIM argument order, which fails, so it is refused here.
    """

    model_cpu_offload_seq = "text_encoder->vae->transformer->vae"

    def prepare_control_latents(self, mask=None, masked_image=None):
        """diffusers' prepare_control_latents: each video of `mask` / `masked_image` ([B, 3, F, H, W]) encoded on
        its own, the posterior's mode x the VAE's scaling_factor; returns (mask latents, masked_image latents), each
        [B, C, F', h, w] or None."""
        scale = np.float32(self.vae.config.scaling_factor)
        out = []
        for video in (mask, masked_image):
            out.append(None if video is None else scale * self._encode_videos(np.asarray(video), None, sample=False))
        return tuple(out)

    def _latent_shape(self, videos, num_frames, height, width):
        """The initial noise has the VAE's latent channels, half the transformer's in_channels."""
        shape = super()._latent_shape(videos, num_frames, height, width)
        return shape[:2] + (self.transformer.config.in_channels // 2,) + shape[3:]

    def __call__(self, prompt=None, negative_prompt=None, control_video=None, height=None, width=None,
                 num_inference_steps=50, timesteps=None, guidance_scale=6, use_dynamic_cfg=False,
                 num_videos_per_prompt=1, eta=0.0, generator=None, latents=None, control_video_latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, output_type="pil", return_dict=True,
                 attention_kwargs=None, callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length=226):  # fmt: skip
        """Generates a video from text under a control video, as diffusers' CogVideoXFunControlPipeline.__call__.

        Args:
            control_video (optional): the control video: a list of PIL images, an array [frames, height, width, 3]
                in [0, 1], a list of those (one per prompt), an array [videos, frames, height, width, 3] or a video
                file path; resized to height x width as diffusers' VideoProcessor does. Its frame count F sets the
                output's length ((F - 1) // 4 + 1 latent frames). Either it or `control_video_latents`.
            control_video_latents (array [videos, C, latent frames, h, w], optional): the control video already
                encoded as prepare_control_latents returns it (the posterior's mode x scaling_factor, channels
                before frames). (diffusers accepts the argument but then fails on it; here it is used as given.)
            latents (array [videos, latent frames, C, h, w], optional): the initial noise (C = in_channels / 2).
            prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, use_dynamic_cfg, eta,
                generator, prompt_embeds, negative_prompt_embeds, output_type, return_dict, attention_kwargs,
                callback_on_step_end, callback_on_step_end_tensor_inputs, max_sequence_length: as
                CogVideoXPipeline; height and width default to the transformer's sample size.
            timesteps: custom timesteps are not supported (ValueError).
            num_videos_per_prompt: ignored (warns once when not 1): diffusers makes one video per prompt.

        Returns:
            CogVideoXPipelineOutput with `frames`, or (frames,) when return_dict is False.

        Bad arguments (no control video or both forms, a control video with no frames or one per prompt missing,
        control latents whose frames, size or channels do not fit, a transformer that is not a Fun-Control one,
        CogVideoXDPMScheduler) raise ValueError / OSError before any encoding or denoising.
        """
        arguments = dict(locals())
        from .schedulers import CogVideoXDPMScheduler

        height, width = self._video_call_size(height, width, timesteps)
        if control_video is not None and control_video_latents is not None:
            raise ValueError(
                "Cannot pass both `control_video` and `control_video_latents`. Please make sure to pass only one of "
                "these parameters."
            )
        if control_video is None and control_video_latents is None:
            raise ValueError("Provide either `control_video` or `control_video_latents`")
        if isinstance(self.scheduler, CogVideoXDPMScheduler):
            raise ValueError(
                "CogVideoXFunControlPipeline steps its scheduler as DDIM (scheduler.step(noise_pred, t, latents)), "
                "which CogVideoXDPMScheduler does not take (diffusers fails on it too): use DDIMScheduler or "
                "CogVideoXDDIMScheduler"
            )
        self._warn_videos_per_prompt(num_videos_per_prompt)
        tc, latent_channels = self.transformer.config, self.vae.config.latent_channels
        if tc.in_channels != 2 * latent_channels:
            raise ValueError(
                f"the transformer takes {tc.in_channels} input channels; a Fun-Control transformer takes twice the "
                f"VAE's {latent_channels} latent channels (noise + control latents), {2 * latent_channels}"
            )
        s = self.vae_scale_factor_spatial
        encode_video = None
        if control_video is not None:
            encode_video = self._video_processor().preprocess_video(control_video, height, width, "control_video")
            latent_frames = (encode_video.shape[2] - 1) // self.vae_scale_factor_temporal + 1
            videos = encode_video.shape[0]
        else:
            from .pipeline import _finite_array

            control_video_latents = _finite_array(control_video_latents, "control_video_latents")
            if control_video_latents.ndim != 5 or control_video_latents.shape[1] != latent_channels or \
                    control_video_latents.shape[3:] != (height // s, width // s):  # fmt: skip
                raise ValueError(
                    f"control_video_latents must be [videos, {latent_channels}, latent frames, {height // s}, "
                    f"{width // s}] (the VAE's latents of the control video at {height}x{width}), got shape "
                    f"{control_video_latents.shape}"
                )
            latent_frames, videos = control_video_latents.shape[2], control_video_latents.shape[0]
        self._check_latent_frames(latent_frames, "control video")
        num_frames = self._frames_for_latents(latent_frames)
        self.check_inputs(prompt, height, width, num_frames, num_inference_steps, negative_prompt,
                          callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds, output_type,
                          latents, guidance_scale, 1, eta)  # fmt: skip
        batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else len(prompt_embeds)
        if videos != batch:
            raise ValueError(f"{videos} control videos for {batch} prompts: pass one control video per prompt")
        if encode_video is not None:
            self._check_encode(encode_video, latent_frames, "control_video")
        return self._call(self._video_request(arguments, height=height, width=width, num_frames=num_frames,
                                              encode_video=encode_video,
                                              control_video_latents=control_video_latents))  # fmt: skip

    def _prepare_call_latents(self, scheduler, request, report):
        """The initial noise (in_channels / 2 channels, as diffusers' prepare_latents draws it), then the control
        latents [videos, F, C, h, w]: the conditioning of every step."""
        r = request
        latents = self.prepare_latents(r.videos, self.transformer.config.in_channels // 2, r.num_frames, r.height,
                                       r.width, r.generator, r.latents, scheduler=scheduler)  # fmt: skip
        control = r.control_video_latents
        if control is None:
            with self._stage(report, "encode_video", "vae"):
                _, control = self.prepare_control_latents(None, r.encode_video)
        return latents, np.ascontiguousarray(np.asarray(control, dtype=np.float32).transpose(0, 2, 1, 3, 4))
