"""Analytic FLOPs of benchmarks/train_step.py (the MFU numerator) against independent counts:
torch's FlopCounterMode on the timm DINOv2 ViT (matmuls + SDPA, 2 FLOPs per MAC) and the JAX
backbone's own parameter shapes (SwiGLU hidden width)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_step as bench  # noqa: E402


@pytest.mark.parametrize("arch,img,patch", [("tiny", 56, 14), ("vit_small", 224, 14), ("vit_small", 98, 14)])
def test_forward_flops_match_torch_flop_counter(arch, img, patch):
    torch = pytest.importorskip("torch")
    import train_step_torch

    train_step_torch._import_timm()  # defines the torchvision op schemas before timm is imported
    from torch.utils.flop_counter import FlopCounterMode

    class A:
        pass

    a = A()
    a.arch, a.img_size, a.patch_size, a.registers = arch, img, patch, 0
    model = train_step_torch.build_model(a).eval()
    for m in model.modules():  # explicit q@k^T and attn@v matmuls: the counter skips the CPU SDPA kernel
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.forward_features(torch.zeros(1, 3, img, img))
    assert counter.get_total_flops() == bench.vit_forward_flops(arch, img, patch)


def test_swiglu_width_matches_backbone():
    from dinov2_jax.models.layers.swiglu_ffn import swiglu_hidden_dim

    d = 1536
    assert bench.ffn_macs_per_token(d, "swiglufused") == 3 * d * swiglu_hidden_dim(4 * d)
    assert bench.ffn_macs_per_token(d, "mlp") == 2 * d * 4 * d


def test_train_flops_and_peak_table():
    f = bench.vit_forward_flops("vit_large", 224, 14)
    assert bench.backbone_step_flops("vit_large", 224, 14, 8) == 3 * 8 * f
    # ViT-L/14 at 224: ~ 2 x 0.3 G params x 257 tokens + attention ~ 0.16 TFLOP per image
    assert 0.15e12 < f < 0.17e12
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 156.0
    assert bench.peak_tflops("cpu", "bfloat16") is None
