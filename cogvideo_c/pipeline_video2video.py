"""CogVideoXVideoToVideoPipeline with diffusers' names, call signature and numbers, on the shared denoising loop of
CogVideoXPipeline (its hooks: the strength-shortened timesteps and the noised video latents)."""

import numbers

import numpy as np

from .pipeline import CogVideoXPipeline, randn_tensor
from .video_processor import VideoProcessor


def _check_strength(strength, num_inference_steps):
    """strength must be a real number in (0, 1] that leaves at least one of num_inference_steps steps to run."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not np.isfinite(strength):
        raise ValueError(f"`strength` must be a number in (0, 1], got {strength!r}")
    if not 0 < strength <= 1:
        raise ValueError(f"The value of strength should in (0.0, 1.0] but is {strength}")
    if isinstance(num_inference_steps, (int, np.integer)) and not isinstance(num_inference_steps, bool):
        if int(num_inference_steps * strength) < 1:
            raise ValueError(
                f"strength {strength} of num_inference_steps {num_inference_steps} runs no denoising step "
                f"(int({num_inference_steps} * {strength}) = 0): raise strength or num_inference_steps"
            )


class _VideoConditioned:
    """What the video-conditioned pipelines share: the VideoProcessor, the checks of a video against the VAE and the
    transformer, and the per-video VAE encode diffusers runs (one `vae.encode(video[i:i+1])` per video)."""

    def _video_processor(self):
        return VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    def _warn_videos_per_prompt(self, num_videos_per_prompt):
        if num_videos_per_prompt != 1:
            self._warn_once("num_videos_per_prompt", f"num_videos_per_prompt={num_videos_per_prompt} is ignored: "
                            f"{type(self).__name__} makes one video per prompt (diffusers sets it to 1)")  # fmt: skip

    def _video_call_size(self, height, width, timesteps):
        """The call's height and width (the transformer's sample size by default, as diffusers), checked; custom
        timesteps refused (the CogVideoX schedulers' set_timesteps takes none)."""
        height, width, _ = self._default_size(height, width, 1)
        if timesteps is not None:
            raise ValueError("custom `timesteps` are not supported by the CogVideoX schedulers' set_timesteps")
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        return height, width

    def _frames_for_latents(self, latent_frames):
        """The pixel frame count whose latents have latent_frames frames and that the VAE decodes back to itself:
        what the shared checks and the planner are given for a video of any length."""
        return self.vae.decoded_frames(latent_frames)

    def _check_latent_frames(self, latent_frames, what):
        """CogVideoX 1.5 (patch_size_t): the latent frames must fill whole temporal patches (diffusers raises too;
        only text-to-video pads)."""
        pt = self.transformer.config.patch_size_t
        if pt is not None and latent_frames % pt != 0:
            raise ValueError(
                f"The number of latent frames must be divisible by `patch_size_t={pt}` but the given {what} contains "
                f"latent_frames={latent_frames}, which is not divisible."
            )

    def _check_encode(self, video, latent_frames, what):
        """The VAE's encode of one video of `video`'s shape, with its tiling settings, must give the latents the
        denoising uses ([latent_channels, latent_frames, H / 8, W / 8]): asked of the VAE's own shape rule, before
        any work."""
        _, c, f, h, w = video.shape
        if c != self.vae.config.in_channels:
            raise ValueError(f"`{what}` has {c} channels; the VAE encodes {self.vae.config.in_channels}")
        s = self.vae_scale_factor_spatial
        # the encoder's output: the posterior's moments (mean and log-variance: 2 x latent_channels)
        got = tuple(self.vae._core.output_shape((1, c, f, h, w), False, self.vae._tiling()))[2:]
        want = (latent_frames, h // s, w // s)
        if got != want:
            tiles = " with the VAE's tiling settings" if self.vae.use_tiling else ""
            raise ValueError(f"the VAE encodes a {what} of {f} frames at {h}x{w}{tiles} to latents of (frames, "
                             f"height, width) {got}, not {want} (the latents the denoising uses)")  # fmt: skip

    def _encode_videos(self, video, generator, sample):
        """[B, 3, F, H, W] -> the VAE's latents [B, C, F', h, w], encoded one video at a time as diffusers does:
        a draw from each posterior (with generator[i], or the one generator in turn) when sample, else its mode."""
        latents = []
        for i in range(video.shape[0]):
            dist = self.vae.encode(video[i : i + 1]).latent_dist
            if sample:
                latents.append(dist.sample(generator[i] if isinstance(generator, list) else generator))
            else:
                latents.append(dist.mode())
        return np.concatenate(latents).astype(np.float32, copy=False)

    def _video_request(self, arguments, **derived):
        """The call's _request from its __call__ arguments (`arguments`: the call's parameters by name) with what
        the call derived from them replacing or adding entries (num_frames, the preprocessed video, ...)."""
        passed = {k: v for k, v in arguments.items() if k not in ("video", "control_video")}
        return self._request(dict(passed, num_videos_per_prompt=1, **derived))

    def _vae_encode_shapes(self, request):
        """The planner's encode stage: one video of the batch at a time."""
        video = getattr(request, "encode_video", None)
        return [] if video is None else [(1, *video.shape[1:])]


class CogVideoXVideoToVideoPipeline(_VideoConditioned, CogVideoXPipeline):
    """Video-to-video with CogVideoX, exactly as diffusers' CogVideoXVideoToVideoPipeline computes it: the input
    video is encoded by the VAE (a posterior draw per video), noised to the first of the timesteps that `strength`
    keeps, and denoised from there with the text guidance of CogVideoXPipeline.

    Args: as CogVideoXPipeline (tokenizer, text_encoder, vae, transformer, scheduler); the same components (e.g.
    `CogVideoXVideoToVideoPipeline(**t2v_pipe.components)` or from_pretrained of a text-to-video folder).
    """

    def get_timesteps(self, num_inference_steps, timesteps, strength, device=None, scheduler=None):
        """diffusers' get_timesteps: the last int(num_inference_steps * strength) of the timesteps, and that count."""
        scheduler = scheduler or self.scheduler
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        return timesteps[t_start * scheduler.order :], num_inference_steps - t_start

    def __call__(self, video=None, prompt=None, negative_prompt=None, height=None, width=None, num_inference_steps=50,
                 timesteps=None, strength=0.8, guidance_scale=6, use_dynamic_cfg=False, num_videos_per_prompt=1,
                 eta=0.0, generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type="pil", return_dict=True, attention_kwargs=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length=226):  # fmt: skip
        """Generates a video from a video and text, as diffusers' CogVideoXVideoToVideoPipeline.__call__.

        Args:
            video (optional): the input video: a list of PIL images, an array [frames, height, width, 3] in [0, 1],
                a list of those (one video per prompt), an array [videos, frames, height, width, 3], or a video file
                path (read with cogvideo_c.load_video). Resized to height x width as diffusers' VideoProcessor does
                (PIL: Lanczos; arrays: nearest). Its frame count F gives (F - 1) // 4 + 1 latent frames; the output
                has the frames the VAE decodes from those (F for F = 4k + 1). One video serves every prompt, or one
                per prompt. Either `video` or `latents`.
            prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, use_dynamic_cfg, eta,
                prompt_embeds, negative_prompt_embeds, output_type, return_dict, attention_kwargs,
                callback_on_step_end, callback_on_step_end_tensor_inputs, max_sequence_length: as
                CogVideoXPipeline; height and width default to the transformer's sample size (not the video's).
            strength (float, defaults to 0.8): in (0, 1]; the last int(num_inference_steps * strength) timesteps
                run, from noise added to the video latents at the first of them (1: from almost pure noise).
            timesteps: custom timesteps are not supported (ValueError).
            num_videos_per_prompt: ignored (warns once when not 1): diffusers makes one video per prompt.
            generator (optional): an int seed (one NumPy generator for the call's draws in turn), a
                numpy.random.Generator, a torch.Generator, or a list with one per video. Draws in diffusers'
                order: each video's posterior sample, the noise added to the latents, then the DPM scheduler's.
            latents (array [videos, latent frames, C, h, w], optional): already-noised latents to start from
                (multiplied by the scheduler's init_noise_sigma, as diffusers), instead of `video`.

        Returns:
            CogVideoXPipelineOutput with `frames`, or (frames,) when return_dict is False.

        Bad arguments (a video with no frames, frames of different sizes, strength outside (0, 1], a file that
        cannot be read, a video and latents together, a transformer whose in_channels differ from the VAE's latent
        channels) raise ValueError / OSError before any encoding or denoising.
        """
        arguments = dict(locals())
        height, width = self._video_call_size(height, width, timesteps)
        if video is not None and latents is not None:
            raise ValueError("Only one of `video` or `latents` should be provided")
        if video is None and latents is None:
            raise ValueError("Provide either `video` or `latents`")
        _check_strength(strength, num_inference_steps)
        self._warn_videos_per_prompt(num_videos_per_prompt)
        tc = self.transformer.config
        if tc.in_channels != self.vae.config.latent_channels:
            raise ValueError(
                f"the transformer takes {tc.in_channels} input channels but the VAE's latents have "
                f"{self.vae.config.latent_channels}: video-to-video needs a text-to-video transformer (not an "
                "image-to-video or Fun-Control one)"
            )
        encode_video = None
        if video is not None:
            encode_video = self._video_processor().preprocess_video(video, height, width)
            latent_frames = (encode_video.shape[2] - 1) // self.vae_scale_factor_temporal + 1
        else:
            latent_frames = int(np.shape(latents)[1]) if np.ndim(latents) == 5 else 1
        self._check_latent_frames(latent_frames, "video")
        num_frames = self._frames_for_latents(latent_frames)
        self.check_inputs(prompt, height, width, num_frames, num_inference_steps, negative_prompt,
                          callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds, output_type,
                          latents, guidance_scale, 1, eta)  # fmt: skip
        if encode_video is not None:
            batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else len(prompt_embeds)
            n = encode_video.shape[0]
            if n != batch and (n != 1 or isinstance(generator, list)):
                raise ValueError(
                    f"{n} videos for {batch} prompts: pass one video per prompt, or one video for every prompt "
                    "(without a list of generators)"
                )
            self._check_encode(encode_video, latent_frames, "video")
        if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
            generator = np.random.default_rng(int(generator))  # one stream: posterior, noise, scheduler in turn
        return self._call(self._video_request(arguments, height=height, width=width, num_frames=num_frames,
                                              generator=generator, encode_video=encode_video))  # fmt: skip

    def _prepare_timesteps(self, scheduler, request):
        """The scheduler's timesteps shortened by get_timesteps(strength); the noise goes in at the first one."""
        r = request
        scheduler.set_timesteps(r.num_inference_steps)
        timesteps, r.num_inference_steps = self.get_timesteps(
            r.num_inference_steps, scheduler.timesteps, r.strength, scheduler=scheduler
        )
        r.latent_timestep = np.repeat(np.asarray(timesteps[:1], dtype=np.int64), r.videos)
        return timesteps

    def _prepare_call_latents(self, scheduler, request, report):
        """diffusers' prepare_latents: the given latents, or the video encoded (a posterior draw per video), scaled
        by the VAE's scaling_factor and noised to the first timestep by scheduler.add_noise."""
        r = request
        sigma = np.float32(scheduler.init_noise_sigma)
        if r.latents is not None:
            return np.asarray(r.latents, dtype=np.float32) * sigma, None
        with self._stage(report, "encode_video", "vae"):
            init = self._encode_videos(r.encode_video, r.generator, sample=True)
        init = np.float32(self.vae_scaling_factor_image) * init.transpose(0, 2, 1, 3, 4)  # BCFHW -> BFCHW
        shape = (r.videos, init.shape[1], self.transformer.config.in_channels, *init.shape[3:])
        noise = randn_tensor(shape, r.generator)
        latents = scheduler.add_noise(init, noise, r.latent_timestep)
        return np.asarray(latents, dtype=np.float32) * sigma, None
