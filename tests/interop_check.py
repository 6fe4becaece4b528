"""The other side of tests/test_interop.py, run in scripts/env_interop.sh's virtualenv (real timm and
open_clip; torch 2.14.1). It imports torch, timm, open_clip and safetensors only, never the checkout.

    python tests/interop_check.py JOB.json RESULT.json

JOB.json holds
  * "parity": [{"export": F, "case": C}]: for each ``catlip export --format timm`` file F, build
    ``timm.create_model(meta["timm_model"], pretrained=False, num_classes=meta["timm_num_classes"],
    **json.loads(meta["timm_kwargs"]))``, ``load_state_dict(load_file(F), strict=True)``, run it on
    C's "images" and compare with C's "logits" (our model's, fp32): |timm - ours| <= atol + rtol |ours|;
  * "make": [{"library": "timm" | "open_clip", "name": ..., "kwargs": {...}, "out": P, "seed": s}]:
    build that model here (random weights, every parameter perturbed so no tensor is a constant),
    and save its state dict, random images and its output (timm: logits; open_clip: the pooled
    features before ``proj``, which is set to the identity) to P, for the test to load into our ViT.
  * "resample": [{"in": F, "grid": [h, w], "out": P}]: timm's ``resample_abs_pos_embed`` of F's
    "pos" (1, 1 + g*g, W) to the (h, w) grid (one prefix token, timm's defaults: bicubic,
    antialiased), saved as P's "pos".
  * "folders": [{"dir": D, "images": [...], "out": P}]: a ``catlip export --out D`` folder built
    through timm's public API, ``timm.create_model("local-dir:" + D, pretrained=True)``, its
    transform ``create_transform(**resolve_data_config(model=m))`` run on the image files, the
    logits saved as P's "logits" (N, V).
RESULT.json: {"parity": [{"export", "timm_model", "max_abs_diff", "ok"}], "made": [P, ...],
"resampled": [P, ...], "folders": [{"dir", "data_config", "transform", "label_names", "num_classes"}]}.
"""

from __future__ import annotations

import json
import sys

import torch


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Every parameter moved by noise: a swapped norm or a zero bias then changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def parity(job: dict, atol: float, rtol: float) -> dict:
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(job["export"], "pt") as f:
        meta = f.metadata()
    model = timm.create_model(
        meta["timm_model"],
        pretrained=False,
        num_classes=int(meta["timm_num_classes"]),
        **json.loads(meta["timm_kwargs"]),
    ).eval()
    model.load_state_dict(load_file(job["export"]), strict=True)
    case = load_file(job["case"])
    with torch.no_grad():
        logits = model(case["images"])
    ours = case["logits"]
    diff = (logits - ours).abs()
    ok = bool((diff <= atol + rtol * ours.abs()).all()) and logits.shape == ours.shape
    return {
        "export": job["export"],
        "timm_model": meta["timm_model"],
        "timm_kwargs": meta["timm_kwargs"],
        "max_abs_diff": float(diff.max()),
        "max_abs_logit": float(ours.abs().max()),
        "ok": ok,
    }


def make(job: dict) -> str:
    from safetensors.torch import save_file

    torch.manual_seed(job["seed"])
    if job["library"] == "timm":
        import timm

        model = timm.create_model(job["name"], pretrained=False, **job["kwargs"]).eval()
        size = model.patch_embed.img_size[0]
    else:  # open_clip's image tower, built directly (no download, no text tower)
        from open_clip.transformer import VisionTransformer

        kw = dict(job["kwargs"])
        model = VisionTransformer(**kw).eval()
        size = kw["image_size"]
    _perturb(model, job["seed"])
    if job["library"] == "open_clip":
        with torch.no_grad():
            model.proj.copy_(torch.eye(model.proj.shape[0], model.proj.shape[1]))  # features before proj
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(job["seed"] + 1))
    with torch.no_grad():
        out = model(images)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, job["out"])
    save_file({"images": images, "output": out.contiguous()}, job["out"] + ".case")
    return job["out"]


def resample(job: dict) -> str:
    from safetensors.torch import load_file, save_file
    from timm.layers import resample_abs_pos_embed

    pos = load_file(job["in"])["pos"]
    out = resample_abs_pos_embed(pos, new_size=list(job["grid"]), num_prefix_tokens=1)
    save_file({"pos": out.contiguous()}, job["out"])
    return job["out"]


def folder(job: dict) -> dict:
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    model = timm.create_model("local-dir:" + job["dir"], pretrained=True).eval()
    config = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        images = torch.stack([transform(Image.open(f).convert("RGB")) for f in job["images"]])  # (N, 3, S, S)
        logits = model(images)  # (N, V)
    save_file({"logits": logits.contiguous()}, job["out"])
    return {
        "dir": job["dir"],
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "transform": repr(transform),
        "label_names": list(model.pretrained_cfg.get("label_names") or []),
        "num_classes": model.num_classes,
    }


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    job = json.loads(open(job_path).read())
    torch.set_num_threads(int(job.get("threads", 2)))
    atol, rtol = job.get("atol", 1e-5), job.get("rtol", 1e-5)
    result = {
        "torch": torch.__version__,
        "parity": [parity(p, atol, rtol) for p in job.get("parity", [])],
        "made": [make(m) for m in job.get("make", [])],
        "resampled": [resample(r) for r in job.get("resample", [])],
        "folders": [folder(f) for f in job.get("folders", [])],
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["parity"], indent=1))
    return 0 if all(p["ok"] for p in result["parity"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
