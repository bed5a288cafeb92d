"""CogVideoXImageToVideoPipeline with diffusers' names, call signature and numbers, on the shared denoising loop."""

import contextlib
import os

import numpy as np

from .image_processor import VaeImageProcessor, _is_pil
from .pipeline import CogVideoXPipeline, _finite_array, _initial_noise


def _random_streams(generator):
    """diffusers draws the image posterior's noise and then the initial latents from one torch.Generator: an int
    seed becomes one NumPy stream here for both (so the two draws differ), in a list too; other generators are used
    as given."""
    if isinstance(generator, (list, tuple)):
        return [_random_streams(g) for g in generator]
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    return generator


def _check_generators(generator, videos):
    if isinstance(generator, list) and len(generator) != videos:
        raise ValueError(
            f"You have passed a list of generators of length {len(generator)}, but requested an effective batch"
            f" size of {videos}. Make sure the batch size matches the length of the generators."
        )


class CogVideoXImageToVideoPipeline(CogVideoXPipeline):
    """Image-to-video with CogVideoX (CogVideoX-5b-I2V, CogVideoX1.5-5B-I2V), exactly as diffusers'
    CogVideoXImageToVideoPipeline computes it: the image is preprocessed as diffusers' VaeImageProcessor does,
    encoded by the VAE (a posterior sample, scaled by scaling_factor), placed as the first latent frame and
    zero-padded to the video's latent frames, and concatenated with the noisy latents along the channels at every
    step; CogVideoX 1.5 models get the ofs embedding (2.0) and their temporal-patch padding.

    Args:
        tokenizer (T5Tokenizer): turns prompts into T5 token ids.
        text_encoder (T5EncoderModel): the frozen T5 v1.1 encoder giving the prompt embeddings.
        vae (AutoencoderKLCogVideoX): encodes the image and decodes the denoised latents to frames.
        transformer (CogVideoXTransformer3DModel): the denoiser, with in_channels = 2 x the VAE's latent channels.
        scheduler (CogVideoXDDIMScheduler, CogVideoXDPMScheduler or DDIMScheduler): the sampler; each call runs on
            its own copy.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        super().__init__(tokenizer, text_encoder, vae, transformer, scheduler)
        self.video_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    # ---- checks --------------------------------------------------------------------------------------------

    def check_inputs(self, image, prompt, height, width, negative_prompt, callback_on_step_end_tensor_inputs,
                     latents=None, prompt_embeds=None, negative_prompt_embeds=None, num_frames=49,
                     num_inference_steps=50, output_type="pil", guidance_scale=6.0, num_videos_per_prompt=1,
                     eta=0.0, image_latents=None):  # fmt: skip
        """diffusers' checks (the type of `image`, sizes, prompts and their embeddings) and those of
        CogVideoXPipeline.check_inputs (frame counts, NaN inputs, the shape of `latents`, memory), all before any
        work. The image's content is checked when it is preprocessed, also before any model runs."""
        if image is None and image_latents is None:
            raise ValueError("`image` is required: the PIL image, NumPy array or image file to start the video from")
        if image is not None and image_latents is not None:
            raise ValueError("Cannot forward both `image` and `image_latents`: the latents replace the image's encode")
        if image is not None and not (isinstance(image, (list, tuple, np.ndarray, str, os.PathLike)) or _is_pil(image)):
            raise ValueError(
                "`image` has to be of type `PIL.Image.Image`, `np.ndarray`, a path to an image file, or a list of "
                f"them, but is {type(image)}"
            )
        CogVideoXPipeline.check_inputs(
            self, prompt, height, width, num_frames, num_inference_steps, negative_prompt,
            callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds, output_type, latents,
            guidance_scale, num_videos_per_prompt, eta,
        )  # fmt: skip
        c = self.transformer.config
        s = self.vae_scale_factor_spatial
        if c.use_learned_positional_embeddings and (height // s != c.sample_height or width // s != c.sample_width):
            raise ValueError(
                "It is currently not possible to generate videos at a different resolution that the defaults. This "
                "should only be the case with 'THUDM/CogVideoX-5b-I2V' (a learned positional table of "
                f"{c.sample_height * s}x{c.sample_width * s} pixels; got {height}x{width})."
            )
        if c.in_channels != 2 * self.vae.config.latent_channels:
            raise ValueError(
                f"the transformer's in_channels ({c.in_channels}) must be twice the VAE's latent_channels "
                f"({self.vae.config.latent_channels}): image-to-video concatenates the image latents to the noise "
                "(is this a text-to-video model?)"
            )
        if image_latents is not None:
            batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else np.shape(prompt_embeds)[0]
            want = (batch, 1, c.in_channels // 2, height // s, width // s)
            if np.shape(image_latents) != want:
                raise ValueError(
                    f"image_latents must have shape {want} ([prompts, 1, latent channels, height / {s}, width / {s}]:"
                    f" one scaled first-frame latent per prompt), got {np.shape(image_latents)}"
                )
            _finite_array(image_latents, "image_latents")

    def _latent_shape(self, videos, num_frames, height, width):
        """The noise latents: half the transformer's input channels (the other half is the image's)."""
        shape = super()._latent_shape(videos, num_frames, height, width)
        return shape[:2] + (self.transformer.config.in_channels // 2,) + shape[3:]

    def _load_images(self, image, batch_size, num_videos_per_prompt, height, width):
        """`image` (one, or a list with one per prompt; paths are read with load_image) -> float32
        [batch_size x num_videos_per_prompt, 3, height, width] in [-1, 1], each prompt's image repeated for its
        videos."""
        from .utils import load_image

        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        elif isinstance(image, (list, tuple)):
            image = [load_image(i) if isinstance(i, (str, os.PathLike)) else i for i in image]
        pixels = self.video_processor.preprocess(image, height=height, width=width)
        if pixels.shape[0] != batch_size:
            raise ValueError(
                f"`image` holds {pixels.shape[0]} image(s) for {batch_size} prompt(s): pass one image per prompt (the "
                "same image for several prompts is repeated in the list)"
            )
        return np.repeat(pixels, num_videos_per_prompt, axis=0)

    # ---- the call ------------------------------------------------------------------------------------------

    def __call__(self, image=None, prompt=None, negative_prompt=None, height=None, width=None, num_frames=49,
                 num_inference_steps=50, timesteps=None, guidance_scale=6, use_dynamic_cfg=False,
                 num_videos_per_prompt=1, eta=0.0, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type="pil", return_dict=True, attention_kwargs=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length=226, image_latents=None):  # fmt: skip
        """Generates videos that start from `image`, as diffusers' CogVideoXImageToVideoPipeline.__call__.

        Args:
            image (PIL.Image.Image, np.ndarray, str / os.PathLike, or a list of them): the first frame to condition
                on, one per prompt. A PIL image is resized to height x width with Pillow's Lanczos filter; a NumPy
                array is an image [H, W, 3] or a batch [B, H, W, 3], channels last, floats in [0, 1] (a batch with
                values below 0 is taken as [-1, 1], as diffusers does), resized "nearest" as diffusers' torch
                path; a path is read with `cogvideo_c.load_image` (RGB). (diffusers itself accepts PIL images,
                tensors and lists; arrays and paths are the torch-free spellings.)
            prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, use_dynamic_cfg, eta,
            prompt_embeds, negative_prompt_embeds, output_type, return_dict, attention_kwargs, callback_on_step_end,
            callback_on_step_end_tensor_inputs, max_sequence_length: as CogVideoXPipeline.__call__.
            num_frames (int, defaults to 49): frames to generate (4k + 1 for the released models).
            timesteps: not supported (ValueError), as for CogVideoXPipeline.
            num_videos_per_prompt (int, defaults to 1): videos per prompt. diffusers ignores it (always one); here
                each prompt's image and embeddings are repeated, as if the prompt and image were listed that many
                times.
            generator (optional): an int seed, a numpy.random.Generator, a torch.Generator, or a list with one per
                video. As in diffusers, each image's VAE posterior sample is drawn first (one draw per image, in
                order, with that video's generator when a list is given), then the initial latents, then the DPM
                scheduler's noise; an int seed is one stream for the first two.
            latents (array [videos, F, C, h, w], optional): the initial noise (C = in_channels / 2), used instead
                of drawing it (the image is still encoded, and its posterior sample still drawn).
            image_latents (array [prompts, 1, C, h, w], optional; beyond diffusers): the image's latents as
                prepare_latents makes them before padding (the posterior sample x scaling_factor, e.g.
                `image_latents[:, :1]` of an earlier call's prepare_latents), given instead of `image`: no VAE
                encode runs (and no posterior sample is drawn, so the generator's first draw is the noise).

        Returns:
            CogVideoXPipelineOutput with `frames` (see output_type), or the tuple (frames,) when return_dict is False.

        Bad arguments raise ValueError (a missing, unreadable or non-RGB image, an image count that does not match
        the prompts, NaN pixels, sizes, ...) and FileNotFoundError for a missing image file, all before the text
        encoder, the VAE or the transformer runs.
        """
        height, width, num_frames = self._default_size(height, width, num_frames)
        if timesteps is not None:
            raise ValueError("custom `timesteps` are not supported by the CogVideoX schedulers' set_timesteps")
        self.check_inputs(image, prompt, height, width, negative_prompt, callback_on_step_end_tensor_inputs,
                          latents, prompt_embeds, negative_prompt_embeds, num_frames, num_inference_steps,
                          output_type, guidance_scale, num_videos_per_prompt, eta, image_latents)  # fmt: skip
        request = self._request(locals())
        if image_latents is None:
            request.image = self._load_images(image, request.batch_size, num_videos_per_prompt, height, width)
        else:
            request.image_latents = np.repeat(np.asarray(image_latents, np.float32), num_videos_per_prompt, axis=0)
        _check_generators(generator, request.videos)
        return self._call(request)

    # ---- the hooks of the shared loop ----------------------------------------------------------------------

    def _vae_encode_shapes(self, request):
        if getattr(request, "image_latents", None) is not None:  # given: nothing to encode
            return []
        return [(1, 3, 1, request.height, request.width)]  # one image at a time, as diffusers encodes them

    def _prepare_call_latents(self, scheduler, request, report):
        r = request
        stage = self._stage(report, "encode_image", "vae") if r.image is not None else contextlib.nullcontext()
        with stage:
            return self.prepare_latents(
                r.image, r.videos, self.transformer.config.in_channels // 2, r.num_frames, r.height, r.width,
                generator=r.generator, latents=r.latents, scheduler=scheduler, image_latents=r.image_latents,
            )  # fmt: skip

    def _transformer_kwargs(self, request, latents):
        if self.transformer.config.ofs_embed_dim is None:
            return {}
        return {"ofs": np.full((1,), 2.0, dtype=np.float32)}  # diffusers' latents.new_full((1,), fill_value=2.0)

    def prepare_latents(self, image, batch_size=1, num_channels_latents=16, num_frames=13, height=60, width=90,
                        dtype=None, device=None, generator=None, latents=None, scheduler=None,
                        image_latents=None):  # fmt: skip
        """(latents, image_latents), as diffusers' prepare_latents: each image [3, H, W] of `image`
        ([batch_size, 3, H, W] in [-1, 1]) is encoded by the VAE on its own and a posterior sample drawn (with
        generator[i] for a list), scaled by scaling_factor (divided by it for invert_scale_latents VAEs), put
        first and zero-padded to the latent frames [batch, F, C, h, w]; CogVideoX 1.5 (patch_size_t) prepends the
        first F % patch_size_t frames. The latents are drawn (or `latents` taken) after the images, and scaled by
        the scheduler's init_noise_sigma. num_frames counts pixel frames, padded for 1.5 as the call pads them.
        image_latents ([batch_size, 1, C, h, w], beyond diffusers): the scaled first-frame latents, used instead of
        encoding `image` (which may then be None). dtype / device: accepted for diffusers' sake (float32, host
        arrays)."""
        scheduler = scheduler or self.scheduler
        generator = _random_streams(generator)
        _check_generators(generator, batch_size)
        frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        s = self.vae_scale_factor_spatial
        shape = (batch_size, frames, num_channels_latents, height // s, width // s)
        pt = self.transformer.config.patch_size_t
        if pt is not None:  # diffusers' "+ 1 for padding" of CogVideoX 1.5, literally F + F % p_t
            shape = shape[:1] + (shape[1] + shape[1] % pt,) + shape[2:]

        if image_latents is None:
            image_latents = self._encode_images(image, batch_size, generator)
        else:
            image_latents = np.asarray(image_latents, dtype=np.float32)
            if image_latents.shape != (batch_size, 1, *shape[2:]):
                raise ValueError(f"image_latents must have shape {(batch_size, 1, *shape[2:])}, got "
                                 f"{image_latents.shape}")  # fmt: skip
        padding = np.zeros((batch_size, frames - 1, *image_latents.shape[2:]), dtype=np.float32)
        image_latents = np.concatenate([image_latents, padding], axis=1)
        if pt is not None:
            image_latents = np.concatenate([image_latents[:, : image_latents.shape[1] % pt], image_latents], axis=1)

        latents = _initial_noise(shape, generator, latents)  # after the images' draws, as diffusers
        return latents * np.float32(scheduler.init_noise_sigma), np.ascontiguousarray(image_latents)

    def _encode_images(self, image, batch_size, generator):
        """[batch_size, 3, H, W] -> the scaled first-frame latents [batch_size, 1, C, h, w]: one VAE encode and
        posterior draw per image, in order (generator[i] for a list), as diffusers' prepare_latents."""
        image = np.asarray(image, dtype=np.float32)
        if image.shape[0] != batch_size:
            raise ValueError(f"{image.shape[0]} images for a batch of {batch_size} videos: pass one per video")
        image = image[:, :, None]  # [B, C, 1, H, W]
        samples = []
        for i in range(batch_size):
            g = generator[i] if isinstance(generator, list) else generator
            samples.append(self.vae.encode(image[i : i + 1]).latent_dist.sample(generator=g))
        image_latents = np.concatenate(samples).astype(np.float32, copy=False).transpose(0, 2, 1, 3, 4)
        if not self.vae.config.invert_scale_latents:
            return np.float32(self.vae_scaling_factor_image) * image_latents
        # CogVideoX 1.5 was trained without the scaling factor applied (diffusers' comment)
        return np.float32(1 / self.vae_scaling_factor_image) * image_latents
