"""The CLIP baseline: BPE tokenizer parity with open_clip, the CLIP/SigLIP model, and the contrastive
losses' values and gradients against open_clip's ``ClipLoss`` / ``SigLipLoss`` on 1 and 2 ranks.

open_clip (pinned ``open-clip-torch``) is the oracle, but its package ``__init__`` imports
torchvision and timm, and PyPI's torchvision does not load beside this torch; so its two
self-contained modules, ``loss.py`` and ``tokenizer.py`` (torch, regex, ftfy, numpy only), are
loaded from the installed package's files without importing the package.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_ranks

from catlip.clip import CLIP_PRESETS, CLIPModel, TextTransformer, clip_config
from catlip.contrastive import CommStats, ContrastiveLoss, SigLipLoss
from catlip.tokenizer import BPETokenizer, default_tokenizer, default_vocab_path, tokenize

CLIP_MODES = [  # (local_loss, gather_with_grad), open_clip's four combinations
    (False, False),
    (True, False),
    (False, True),
    (True, True),
]
SIGLIP_IMPLS = SigLipLoss.DIST_IMPLS
# float64 on both sides; the two differ only in summation order.
TOL = {"rtol": 1e-10, "atol": 1e-12}


def open_clip_module(name: str):
    """open_clip's ``loss`` or ``tokenizer`` module, executed from its file (package not imported)."""
    key = f"_open_clip_reference_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.fail(
            "open-clip-torch (the reference for these tests) is not installed; it is pinned in requirements.txt"
        )
    path = Path(spec.submodule_search_locations[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[key] = module
    module_spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
TRICKY = [
    "",
    "   \t\n ",
    "A dog. " * 40,  # > 77 tokens: truncated, ends with <end_of_text>
    "supercalifragilisticexpialidocious" * 30,  # one very long word
    "🐶🐱 a dog and a cat 👍🏽👨‍👩‍👧",
    "<b>Bold</b> &amp;amp; &lt;i&gt;tags&lt;/i&gt; &quot;quoted&quot; &#39;x&#39;",
    "Ein Hund fängt einen Frisbee im Park.",
    "一只狗在草地上接飞盘",
    "Кошка сидит на подоконнике",
    "قطة على النافذة",
    "İstanbul ǅ ß ﬁ Ⅻ ½",
    "café cafÃ© naïve",  # mojibake that ftfy repairs
    "I'LL don't it's we're THEY'VE o'clock ''",
    "zero\u200bwidth soft\u00adhyphen tab\there new\nline nbsp\u00a0here",
    "3.14159 2024-01-01 #1 @user $5 100%",
    "<start_of_text> spelled <end_of_text> specials",
    "\x00\x07 control \ufffd",
]


def test_tokenizer_vocabulary_and_specials():
    tok = default_tokenizer()
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id) == (49408, 49406, 49407)
    ids = tokenize(["a photo of a dog"])
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, 0] == 49406 and ids[0, 6] == 49407 and not ids[0, 7:].any()
    assert default_vocab_path().name == "bpe_simple_vocab_16e6.txt.gz"
    assert tok.decode(ids[0, 1:6].tolist()).strip() == "a photo of a dog"


def test_tokenizer_matches_open_clip_on_tricky_strings():
    ref = open_clip_module("tokenizer")
    for n in (77, 16):
        ours, theirs = tokenize(TRICKY, context_length=n), ref.tokenize(TRICKY, context_length=n)
        for text, a, b in zip(TRICKY, ours, theirs, strict=True):
            assert torch.equal(a, b), f"context {n}, {text!r}:\n ours   {a.tolist()}\n theirs {b.tolist()}"
    long = tokenize(["A dog. " * 40])[0]
    assert long[-1] == 49407 and long.ne(0).all()  # truncated to 77, end-of-text kept
    tok = default_tokenizer()
    for text in TRICKY:
        ids = tokenize([text])[0]
        assert tok.decode(ids.tolist()) == ref.decode(ids)


def test_tokenizer_matches_open_clip_on_coco_captions(shared_data, coco_captions):
    from catlip.captions import iter_captions

    ref = open_clip_module("tokenizer")
    photo_captions = [c for _, c in iter_captions(shared_data / "coco_photos" / "captions.tsv")]
    assert len(photo_captions) == 1275
    for captions in (photo_captions, coco_captions):
        ours, theirs = tokenize(captions), ref.tokenize(captions)
        bad = (ours != theirs).any(dim=1).nonzero().flatten().tolist()
        assert not bad, f"{len(bad)} captions differ, e.g. {captions[bad[0]]!r}"


def test_tokenizer_says_where_the_vocabulary_comes_from(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="open-clip-torch"):
        default_vocab_path()
    with pytest.raises(FileNotFoundError):
        BPETokenizer(tmp_path / "missing.txt.gz")


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def test_presets_follow_open_clip():
    b16 = CLIP_PRESETS["clip_vit_b16"]
    assert (b16.embed_dim, b16.vision.width, b16.vision.depth) == (512, 768, 12)
    assert (b16.text.vocab_size, b16.text.context_length, b16.text.width, b16.text.depth, b16.text.heads) == (
        49408,
        77,
        512,
        12,
        8,
    )
    with torch.device("meta"):
        text = TextTransformer(b16.text, b16.embed_dim)
    assert sum(p.numel() for p in text.parameters()) == 63_428_096  # open_clip ViT-B-16's text tower
    h14 = CLIP_PRESETS["clip_vit_h14"]
    assert (h14.embed_dim, h14.text.width, h14.text.depth, h14.text.heads, h14.vision.head_dim) == (
        1024,
        1024,
        24,
        16,
        80,
    )
    with pytest.raises(ValueError, match="unknown CLIP model"):
        clip_config("clip_vit_giant")
    with pytest.raises(ValueError, match="causal"):
        CLIPModel("clip_vit_tiny", text_attn_impl="flash9")


@pytest.mark.parametrize("siglip", [False, True])
def test_clip_model_forward_and_backward(siglip):
    torch.manual_seed(0)
    model = CLIPModel(clip_config("clip_vit_tiny", siglip=siglip))
    images = torch.randn(5, 3, 64, 64)  # (B, 3, H, W)
    tokens = tokenize(["a dog", "two cats on a sofa", "", "a red bus " * 30, "🐶"])  # (B, 77)
    out = model(images, tokens)
    assert out.image_features.shape == out.text_features.shape == (5, 64)
    torch.testing.assert_close(out.image_features.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(out.text_features.norm(dim=-1), torch.ones(5))
    if siglip:
        assert math.isclose(out.logit_scale.item(), 10.0, rel_tol=1e-6) and out.logit_bias.item() == -10.0
        loss = SigLipLoss()(*out)
    else:
        assert math.isclose(out.logit_scale.item(), 1 / 0.07, rel_tol=1e-6) and out.logit_bias is None
        loss = ContrastiveLoss()(*out)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], missing


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_text_tower_is_causal_and_pools_at_end_of_text(impl):
    torch.manual_seed(1)
    cfg = clip_config("clip_vit_tiny").text
    text = TextTransformer(cfg, 32, attn_impl=impl).double()
    tokens = torch.randint(1, 49406, (3, 77))  # (B, S)
    j = 41
    changed = tokens.clone()
    changed[:, j] = (changed[:, j] + 1000) % 49406
    before, after = text.hidden_states(tokens), text.hidden_states(changed)  # (B, S, W)
    torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=1e-12)
    assert (after[:, j:] - before[:, j:]).abs().amax(dim=-1).min() > 1e-6  # later positions see it

    # Pooled at the end-of-text token; what follows it (padding or anything else) is invisible.
    tokens = tokenize(["a dog on a beach", "two cats asleep on a red sofa, one yawning"]).repeat(
        2, 1
    )  # (4, 77)
    tokens[2:, 20:] = torch.randint(1, 49406, (2, 57))
    feats = text(tokens)
    eot = tokens.argmax(dim=-1)
    expect = text.proj(text.hidden_states(tokens)[torch.arange(4), eot])
    torch.testing.assert_close(feats, expect)
    torch.testing.assert_close(feats[2:], feats[:2], rtol=0, atol=1e-12)

    other = TextTransformer(cfg, 32, attn_impl="math" if impl == "sdpa" else "sdpa").double()
    other.load_state_dict(text.state_dict())
    torch.testing.assert_close(other(tokens), feats)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
def features(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Unit image and text features (n, dim), each text near its image, plus a scale and a bias."""
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    return image, text, torch.tensor(11.3, dtype=torch.float64), torch.tensor(-4.2, dtype=torch.float64)


def loss_and_grads(loss_fn, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """[loss, d loss / d input for each input], on fresh leaves."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = loss_fn(*leaves)
    loss.backward()
    return [loss.detach(), *(x.grad for x in leaves)]


def assert_all_close(ours: list, theirs: list, what: str) -> None:
    names = ["loss", "d/d image", "d/d text", "d/d logit_scale", "d/d logit_bias"]
    for name, a, b in zip(names[: len(ours)], ours, theirs, strict=True):
        torch.testing.assert_close(
            torch.as_tensor(a), torch.as_tensor(b), **TOL, msg=lambda m, n=name: f"{what}, {n}: {m}"
        )
    for name, a in zip(
        names[1:4], ours[1:4], strict=True
    ):  # (softmax ignores a shared bias: its gradient is 0)
        assert torch.as_tensor(a).abs().sum() > 0, f"{what}: {name} is all zeros"


def test_losses_match_open_clip_on_one_process():
    ref = open_clip_module("loss")
    image, text, scale, bias = features(37, 40)
    for local_loss, with_grad in CLIP_MODES:  # without a process group all modes are the local loss
        ours = ContrastiveLoss(local_loss=local_loss, gather_with_grad=with_grad)
        theirs = ref.ClipLoss(local_loss=local_loss, gather_with_grad=with_grad)
        what = f"ClipLoss(local_loss={local_loss}, gather_with_grad={with_grad})"
        assert_all_close(
            loss_and_grads(ours, image, text, scale), loss_and_grads(theirs, image, text, scale), what
        )
        assert ours.comm == CommStats()
    assert_all_close(
        loss_and_grads(ContrastiveLoss(), image, text, scale, bias),
        loss_and_grads(ref.ClipLoss(), image, text, scale, bias),
        "ClipLoss with a logit bias",
    )
    for impl in SIGLIP_IMPLS:
        assert_all_close(
            loss_and_grads(SigLipLoss(dist_impl=impl), image, text, scale, bias),
            loss_and_grads(ref.SigLipLoss(dist_impl=impl), image, text, scale, bias),
            f"SigLipLoss({impl})",
        )
    with pytest.raises(ValueError, match="dist_impl"):
        SigLipLoss(dist_impl="reduce")

    # fp32: our error against the fp64 truth is within twice open_clip's own fp32 error, plus a floor.
    truth = loss_and_grads(ContrastiveLoss(), image, text, scale)
    f32 = [x.float() for x in (image, text, scale)]
    ours, theirs = loss_and_grads(ContrastiveLoss(), *f32), loss_and_grads(ref.ClipLoss(), *f32)
    for t, a, b in zip(truth, ours, theirs, strict=True):
        assert (a.double() - t).abs().max() <= 2 * (b.double() - t).abs().max() + 1e-6


def _rank_losses(rank: int, batch: int, dim: int) -> dict:
    """Ours and open_clip's loss and gradients on this rank's half of one global batch."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    ref = open_clip_module("loss")
    image, text, scale, bias = features(world * batch, dim)
    rows = slice(rank * batch, (rank + 1) * batch)
    image, text = image[rows], text[rows]

    def as_lists(values: list[torch.Tensor]) -> list:
        return [v.tolist() for v in values]  # plain lists travel back (no shared-memory tensors)

    out = {}
    for local_loss, with_grad in CLIP_MODES:
        ours = ContrastiveLoss(local_loss=local_loss, gather_with_grad=with_grad)
        theirs = ref.ClipLoss(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world)
        out[("clip", local_loss, with_grad)] = (
            as_lists(loss_and_grads(ours, image, text, scale)),
            as_lists(loss_and_grads(theirs, image, text, scale)),
            ours.comm,
        )
    for impl in SIGLIP_IMPLS:
        ours = SigLipLoss(dist_impl=impl)
        theirs = ref.SigLipLoss(rank=rank, world_size=world, dist_impl=impl)
        out[("siglip", impl)] = (
            as_lists(loss_and_grads(ours, image, text, scale, bias)),
            as_lists(loss_and_grads(theirs, image, text, scale, bias)),
            ours.comm,
        )
    return out


def check_ranks(world: int, batch: int, dim: int, results: list[dict]) -> None:
    image, text, scale, bias = features(world * batch, dim)
    single = {
        "clip": loss_and_grads(ContrastiveLoss(), image, text, scale),
        "siglip": loss_and_grads(SigLipLoss(), image, text, scale, bias),
    }
    for key in results[0]:
        per_rank = []
        for rank, result in enumerate(results):
            ours, theirs, comm = result[key]
            assert_all_close(ours, theirs, f"{key} on rank {rank} of {world}")
            per_rank.append([torch.tensor(x, dtype=torch.float64) for x in ours])
            if key[0] == "clip":  # one all-gather of [image | text] (B, 2D) float64
                assert comm.gathered_bytes == world * batch * 2 * dim * 8 and comm.collectives == 1
            assert comm.recv_bytes == (world - 1) * comm.gathered_bytes // world
        # Against the global batch on one device. Default mode: every rank computes the global
        # loss, and its own rows' gradient (they appear nowhere else). With autograd through the
        # collectives (gather_with_grad, SigLIP) a rank's gradient is that of the sum of all
        # ranks' losses: world x the global one (local_loss: the ranks' losses average to it;
        # SigLIP's sum over pairs / B sums to world x the global sum / (world B)).
        loss, grad_image, grad_text = single[key[0]][:3]
        losses = torch.stack([got[0] for got in per_rank])
        factor = None
        if key == ("clip", False, False):
            torch.testing.assert_close(losses, loss.expand(world), **TOL)
            factor = 1
        elif key[0] == "siglip":
            torch.testing.assert_close(losses.sum(), world * loss, **TOL)
            factor = world
        elif key[2]:
            torch.testing.assert_close(losses.mean(), loss, **TOL)
            factor = world
        if factor is not None:
            for i, grad in ((1, grad_image), (2, grad_text)):
                got = torch.cat([g[i] for g in per_rank])
                torch.testing.assert_close(got, factor * grad, **TOL, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.distributed
@pytest.mark.parametrize(("world", "batch", "dim"), [(2, 5, 24), (4, 3, 16), (5, 2, 16)])
def test_losses_match_open_clip_on_gloo_ranks(world, batch, dim):
    # SigLIP's ring: at W = 2 one one-way shift; W = 4 a bidirectional round then a shift of the
    # passed-on block; W = 5 two bidirectional rounds (gradients travel back two hops).
    check_ranks(world, batch, dim, run_ranks(_rank_losses, world=world, batch=batch, dim=dim))
