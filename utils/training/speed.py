"""Speed switches of params.json: `amp`, `channels_last`, `compile`, `deterministic`.

    precision = Precision(params.amp, device)
    with precision.autocast():
        loss = ...
    precision.backward_step(loss, optimizer)     # GradScaler for fp16, plain step otherwise

The defaults (amp "off", channels_last 0, compile 0, deterministic 1) keep the original's
fp32 numerics. `fast_settings(device)` is what `--fast` turns on: the set measured to help
on that kind of device.

Under fp16 a step whose scaled gradients overflow is skipped by the scaler, which then lowers its
scale; the engine's divergence watch reads the unscaled loss terms, so it stops a run only when the
loss itself is not finite (which no loss scale can mend).
"""
import torch

from utils.base.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, amp, device):
        self.dtype = AMP_DTYPES.get(amp)
        self.device_type = device.type
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def backward_step(self, loss, optimizer, before_step=None):
        """Backward, then `before_step()` (e.g. averaging gradients across ranks), then the step."""
        self.scaler.scale(loss).backward()
        if before_step is not None:
            before_step()
        self.scaler.step(optimizer)
        self.scaler.update()


def cpu_has_fast_bf16():
    # private helpers of torch.cpu, which releases add and rename: a missing one means "no"
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def fast_settings(device):
    """Recommended switches for `device` (--fast)."""
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device)[0] >= 8:  # Ampere and newer: bf16 tensor cores
            return {"amp": "bf16", "channels_last": True, "compile": True, "deterministic": False}
        return {"amp": "fp16", "channels_last": True, "deterministic": False}
    # measured on a 2-core AVX-512 CPU: channels-last 1.3-1.5x, bf16 1.6-1.8x; compiling
    # costs minutes of a small CPU and is left out
    settings = {"channels_last": True}
    if cpu_has_fast_bf16():
        settings["amp"] = "bf16"
    return settings


def to_layout(module, channels_last):
    """`module`'s 4-d weights in NHWC when asked: the trained network and an objective's heads
    alike (a head left NCHW gets the network's NHWC outputs and has its weights converted to
    match at every call)."""
    return module.to(memory_format=torch.channels_last) if channels_last else module


def maybe_compile(model, enabled):
    if not enabled:
        return model
    try:
        return torch.compile(model)
    except RuntimeError as error:  # raised at once where this PyTorch cannot compile on this Python
        raise ConfigError(f"compile: 1: {error}; set compile to 0, or install a PyTorch whose "
                          "torch.compile supports this Python (docs/workflow.md, Which PyTorch)"
                          ) from None
