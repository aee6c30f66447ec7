"""The robust inversion solver, on a known linear generator where the right answer is known."""

from __future__ import annotations

import pytest
import torch

from anomalib_rgi.models.rgi import closed_form_mask, invert
from anomalib_rgi.models.rgi.networks import Generator


def _planted(generator, num: int = 2, value: float = 2.0):
    torch.manual_seed(1)
    latent = torch.randn(num, 12)
    clean = generator(latent).detach()
    region = torch.zeros_like(clean, dtype=torch.bool)
    region[:, :, 2:6, 3:8] = True
    corrupted = torch.where(region, torch.full_like(clean, value), clean)
    return latent, clean, corrupted, region


def _restoration_error(result, clean, region):
    return (result.restored - clean)[region].abs().mean().item()


@pytest.mark.parametrize("solver", ["adam", "closed_form"])
def test_rgi_recovers_planted_corruption_where_plain_inversion_does_not(linear_generator, solver):
    _, clean, corrupted, region = _planted(linear_generator)
    start = torch.zeros(2, 12)
    plain = invert(linear_generator, corrupted, start, mask_solver="none", steps=400, lr=0.05)
    robust = invert(linear_generator, corrupted, start, mask_solver=solver, lam=0.05, steps=1000, lr=0.05)
    assert _restoration_error(plain, clean, region) > 0.3
    assert _restoration_error(robust, clean, region) < 0.05
    clean_error = (robust.restored - clean)[~region].abs().mean().item()
    assert clean_error < 0.02
    detected = robust.mask.abs() > 0.5
    dice = 2 * (detected & region).sum() / (detected.sum() + region.sum())
    assert dice > 0.95


def test_mask_converges_to_corrupted_region_as_lambda_shrinks(linear_generator):
    _, clean, corrupted, region = _planted(linear_generator, value=1.0)
    # Pixels whose planted value happens to be close to the clean one are hardly corrupted.
    changed = region & ((corrupted - clean).abs() > 0.1)
    start = torch.zeros(2, 12)
    recalls, false_alarms = [], []
    for lam in (2.0, 0.5, 0.01):
        result = invert(linear_generator, corrupted, start, mask_solver="closed_form", lam=lam, steps=400, lr=0.05)
        support = result.mask > 0
        recalls.append((support & changed).sum().item() / changed.sum().item())
        false_alarms.append((support & ~region).sum().item())
    assert recalls[0] < recalls[1] < recalls[2]
    assert recalls[2] > 0.97
    assert false_alarms == [0, 0, 0]


def test_closed_form_mask_is_the_minimiser():
    residual = torch.linspace(-2, 2, 41)
    lam = 0.3
    candidates = torch.linspace(-0.5, 1.5, 2001)[:, None]
    objective = (1 - candidates).square() * residual.square() + lam * candidates.abs()
    brute_force = candidates[objective.argmin(dim=0), 0]
    assert torch.allclose(closed_form_mask(residual, lam), brute_force, atol=2e-3)


def test_rrgi_never_changes_trained_weights_and_images_do_not_leak():
    torch.manual_seed(0)
    generator = Generator(image_size=16, latent_stride=4, latent_channels=2, base_channels=4, image_channels=1).eval()
    before = {name: p.detach().clone() for name, p in generator.named_parameters()}
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    start = torch.randn(2, *generator.latent_shape)
    settings = {"lam": 0.1, "steps": 5, "finetune_steps": 5, "finetune_lr": 1e-2}
    both = invert(generator, images, start, **settings)
    alone = invert(generator, images[:1], start[:1], **settings)
    for name, param in generator.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.grad is None
    assert torch.allclose(both.restored[:1], alone.restored, atol=1e-5)
    rgi_only = invert(generator, images[:1], start[:1], lam=0.1, steps=10)
    assert not torch.allclose(rgi_only.restored, alone.restored, atol=1e-4), "fine-tuning had no effect"
    with torch.no_grad():
        trained_start = generator(start)
    torch.testing.assert_close(both.start, trained_start)  # the trained weights' image, not the fine-tuned
    assert not torch.allclose(both.start, both.restored, atol=1e-3)


@pytest.mark.parametrize(
    "settings",
    [
        {"steps": 0, "mask_solver": "closed_form"},
        {"steps": 3, "mask_solver": "adam"},
        {"steps": 0, "finetune_steps": 3, "mask_solver": "closed_form"},
    ],
)
def test_start_is_the_trained_generators_image_at_the_starting_latent(settings):
    torch.manual_seed(0)
    generator = Generator(image_size=16, latent_stride=4, latent_channels=2, base_channels=4, image_channels=1).eval()
    latent = torch.randn(2, *generator.latent_shape)
    result = invert(generator, torch.rand(2, 1, 16, 16) * 2 - 1, latent, lam=0.1, finetune_lr=1e-2, **settings)
    with torch.no_grad():
        torch.testing.assert_close(result.start, generator(latent))


def test_inversion_works_under_inference_mode(linear_generator):
    _, _, corrupted, _ = _planted(linear_generator)
    with torch.inference_mode():
        result = invert(linear_generator, corrupted, torch.zeros(2, 12), lam=0.05, steps=20, lr=0.05)
    assert torch.isfinite(result.restored).all()
    assert result.loss.shape == (2,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask_solver": "bogus"}, "mask_solver"),
        ({"steps": 0}, "at least one step"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"lam": 0.0}, "lam must be positive"),
        ({"steps": -1}, "steps"),
    ],
)
def test_bad_solver_arguments(linear_generator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        invert(linear_generator, torch.zeros(1, 1, 12, 12), torch.zeros(1, 12), **kwargs)


def test_zero_steps_of_plain_inversion_is_the_start_residual(linear_generator):
    images = torch.randn(2, 1, 12, 12)
    start = torch.randn(2, 12)
    result = invert(linear_generator, images, start, steps=0, mask_solver="none")
    with torch.no_grad():
        assert torch.allclose(result.mask, images - linear_generator(start), atol=1e-6)
    assert torch.equal(result.restored, result.start)


def test_non_finite_images_and_mismatched_latents_are_refused(linear_generator):
    images = torch.zeros(2, 1, 12, 12)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        invert(linear_generator, images, torch.zeros(2, 12))
    with pytest.raises(ValueError, match="rows"):
        invert(linear_generator, torch.zeros(2, 1, 12, 12), torch.zeros(3, 12))


def test_given_mask_fits_only_the_known_pixels(linear_generator):
    _, clean, corrupted, region = _planted(linear_generator)
    start = torch.zeros(2, 12)
    given = invert(
        linear_generator, corrupted, start, mask_solver="given", given_mask=region.float(), steps=400, lr=0.05
    )
    assert _restoration_error(given, clean, region) < 0.05
    assert torch.equal(given.mask, region.float())
    with pytest.raises(ValueError, match="given_mask"):
        invert(linear_generator, corrupted, start, mask_solver="given")
    with pytest.raises(ValueError, match="given_mask"):
        invert(linear_generator, corrupted, start, given_mask=region.float())
