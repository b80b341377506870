"""Writes a small synthetic Depth Anything 3 checkpoint (random weights) that ComfyUI's own DA3 loader reads.

Run by test_da3_workflow.py with ComfyUI's python (COMFY_PYTHON) and COMFY_DIR on sys.path, because the
architecture is ComfyUI's (comfy/ldm/depth_anything_3): the file is built from that code, in the layout
its model detection recognises (a DA3-Mono style ViT-S backbone with a DPT head and sky head), and
loaded back through comfy.sd.load_diffusion_model before it is handed over, so a layout ComfyUI does
not recognise fails here with ComfyUI's own message.

    python da3_synthetic_child.py COMFY_DIR OUT.safetensors
"""
from __future__ import annotations

import sys


def main(comfy_dir: str, out: str) -> None:
    sys.path.insert(0, comfy_dir)
    import torch
    from safetensors.torch import save_file

    import comfy.cli_args
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True      # before comfy.model_management picks a device
    import comfy.ops
    import comfy.sd
    from comfy.ldm.depth_anything_3.model import DepthAnything3Net

    torch.manual_seed(0)
    # The smallest preset model detection maps back to the same config (vits: 12 blocks, 384 wide).
    net = DepthAnything3Net(backbone_name="vits", out_layers=[5, 7, 9, 11], head_type="dpt", head_dim_in=384,
                            head_output_dim=1, head_features=32, head_out_channels=[24, 48, 96, 192],
                            head_use_sky_head=True, operations=comfy.ops.disable_weight_init)
    state = {}
    for name, tensor in net.state_dict().items():
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight")):
            value = torch.ones_like(tensor, dtype=torch.float32)
        elif tensor.is_floating_point():
            value = torch.randn(tensor.shape) * 0.05
        else:
            value = tensor.clone()
        state[name] = value.contiguous()
    save_file(state, out)

    patcher = comfy.sd.load_diffusion_model(out)
    model = patcher.model.diffusion_model
    with torch.no_grad():
        depth = model(torch.rand(1, 3, 70, 98))["depth"]
    assert depth.shape[-2:] == (70, 98) and torch.isfinite(depth).all(), depth.shape
    print(f"ok {len(state)} tensors, depth {tuple(depth.shape)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
