"""Module-level behaviour: shapes over batch/size/variant, size errors, determinism, batching,
backward, state-dict round trip (a small ModuleTester mixin, as in smp/torchgeo)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

from changeclip.errors import InputError
from changeclip.model import PRESETS, ChangeCLIP, InputSizeError, build_model, check_input_size
from changeclip.model.context_decoder import ContextDecoder
from changeclip.model.decoder import SwinTextDecode
from changeclip.model.fusion import SELayerV2
from changeclip.model.image_encoder_rn50 import CLIPResNetWithAttention
from changeclip.model.image_encoder_vit import CLIPVisionTransformer
from changeclip.model.layers import drop_path, linear_rates
from changeclip.model.neck import FPN
from changeclip.model.swin import relative_position_index, shifted_window_mask
from changeclip.model.text_encoder import CLIPTextContextEncoder

TINY = ("tiny-rn50", "tiny-vit")


@functools.cache
def _shared_model(variant: str) -> ChangeCLIP:
    """One eval-mode network per variant for the read-only tests (building costs ~0.5 s)."""
    torch.manual_seed(0)
    return build_model(PRESETS[variant])


def _tokens(n: int, k: int = 2, length: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, k, length, dtype=torch.int64)
    ids[..., 0] = 49406
    ids[..., 1:9] = torch.randint(1, 49000, (n, k, 8), generator=g)
    ids[..., 9] = 49407
    return ids


class ModuleTester:
    """Mixin: subclasses define make(), inputs(batch, size) and expected_shapes(batch, size)."""

    batches = (1, 2)
    sizes = (64, 96, 128)

    def make(self) -> nn.Module:
        raise NotImplementedError

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        raise NotImplementedError

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        raise NotImplementedError

    @staticmethod
    def _flat(out: Any) -> list[torch.Tensor]:
        if isinstance(out, (tuple, list)):
            return [t for item in out for t in ModuleTester._flat(item)]
        return [out]

    def test_forward_shapes(self) -> None:
        torch.manual_seed(0)
        module = self.make().eval()
        for batch in self.batches:
            for size in self.sizes:
                with torch.inference_mode():
                    out = self._flat(module(*self.inputs(batch, size)))
                assert [tuple(t.shape) for t in out] == self.expected_shapes(batch, size), (batch, size)
                assert all(torch.isfinite(t).all() for t in out)

    def test_eval_is_deterministic(self) -> None:
        torch.manual_seed(0)
        module = self.make().eval()
        args = self.inputs(2, 64)
        with torch.inference_mode():
            first = self._flat(module(*args))
            second = self._flat(module(*args))
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    def test_backward_reaches_every_parameter(self) -> None:
        torch.manual_seed(0)
        module = self.make().train()
        loss = sum(t.float().square().mean() for t in self._flat(module(*self.inputs(2, 64))))
        loss.backward()
        dead = [n for n, p in module.named_parameters() if p.grad is None]
        assert not dead, f"parameters without gradient: {dead[:5]}"

    def test_state_dict_round_trip(self) -> None:
        torch.manual_seed(0)
        a = self.make().eval()
        torch.manual_seed(1)
        b = self.make().eval()
        b.load_state_dict(a.state_dict(), strict=True)
        args = self.inputs(1, 64)
        with torch.inference_mode():
            assert all(torch.equal(x, y) for x, y in zip(self._flat(a(*args)), self._flat(b(*args)), strict=True))


@pytest.mark.parametrize("variant", TINY)
class TestChangeCLIP(ModuleTester):
    @pytest.fixture(autouse=True)
    def _variant(self, variant: str) -> None:
        self.cfg = PRESETS[variant]

    def make(self) -> nn.Module:
        return build_model(self.cfg)

    def shared(self) -> ChangeCLIP:
        model = _shared_model(self.cfg.name)
        assert not model.training
        return model

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        g = torch.Generator().manual_seed(batch * 1000 + size)
        return torch.randn(batch, 6, size, size, generator=g), _tokens(batch), _tokens(batch, seed=1)

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        return [(batch, 2, size, size)]

    def test_forward_shapes(self) -> None:
        module = self.shared()
        for batch in self.batches:
            for size in self.sizes:
                with torch.inference_mode():
                    out = module.forward_tokens(*self.inputs(batch, size))
                assert tuple(out.shape) == (batch, 2, size, size)
                assert torch.isfinite(out).all()

    def test_non_square(self) -> None:
        module = self.shared()
        x = torch.randn(1, 6, 64, 96)
        with torch.inference_mode():
            assert tuple(module.forward_tokens(x, _tokens(1), _tokens(1)).shape) == (1, 2, 64, 96)

    def test_eval_is_deterministic(self) -> None:
        module = self.shared()
        args = self.inputs(2, 64)
        with torch.inference_mode():
            assert torch.equal(module.forward_tokens(*args), module.forward_tokens(*args))

    def test_batch_equals_single(self) -> None:
        module = self.shared()
        x, ta, tb = self.inputs(2, 64)
        with torch.inference_mode():
            both = module.forward_tokens(x, ta, tb)
            singles = torch.cat([module.forward_tokens(x[i : i + 1], ta[i : i + 1], tb[i : i + 1]) for i in range(2)])
        torch.testing.assert_close(both, singles, rtol=1e-5, atol=1e-5)

    def test_backward_reaches_every_parameter(self) -> None:
        module = self.make().train()
        out = module.forward_tokens(*self.inputs(2, 64))
        nn.functional.cross_entropy(out, torch.zeros(2, 64, 64, dtype=torch.int64)).backward()
        dead = [n for n, p in module.named_parameters() if p.grad is None]
        assert not dead, f"parameters without gradient: {dead[:5]}"

    def test_state_dict_round_trip(self) -> None:
        torch.manual_seed(0)
        a = self.make()
        torch.manual_seed(1)
        b = self.make()
        b.load_state_dict(a.state_dict(), strict=True)
        args = self.inputs(1, 64)
        with torch.inference_mode():
            assert torch.equal(a.forward_tokens(*args), b.forward_tokens(*args))

    def test_encode_text_then_forward(self) -> None:
        module = self.shared()
        x, ta, tb = self.inputs(2, 64)
        with torch.inference_mode():
            emb_a = module.encode_text(ta.reshape(-1, 64)).reshape(2, 2, -1)
            assert tuple(emb_a.shape) == (2, 2, self.cfg.embed_dim)
            emb_b = module.encode_text(tb)
            torch.testing.assert_close(module(x, emb_a, emb_b), module.forward_tokens(x, ta, tb))
            # a (1, 2, D) text embedding is broadcast over the batch
            one = module.encode_text(ta[:1])
            torch.testing.assert_close(module(x, one, one), module(x, one.expand(2, -1, -1), one.expand(2, -1, -1)))

    @pytest.mark.parametrize(("h", "w"), [(100, 64), (64, 50), (16, 64), (0, 64)])
    def test_size_not_multiple_of_32(self, h: int, w: int) -> None:
        module = self.shared()
        x = torch.zeros(1, 6, h, w)
        with pytest.raises(InputSizeError, match="multiples of 32") as info:
            module.forward_tokens(x, _tokens(1), _tokens(1))
        assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)

    def test_wrong_shapes(self) -> None:
        module = self.shared()
        with pytest.raises(InputError, match=r"\(B, 6, H, W\)"):
            module.forward_tokens(torch.zeros(1, 3, 64, 64), _tokens(1), _tokens(1))
        with pytest.raises(InputError, match="float tensor"):
            module.forward_tokens(torch.zeros(1, 6, 64, 64, dtype=torch.uint8), _tokens(1), _tokens(1))
        with pytest.raises(InputError, match="text_a must be"):
            module(torch.zeros(1, 6, 64, 64), torch.zeros(1, 3, self.cfg.embed_dim), torch.zeros(1, 2, self.cfg.embed_dim))
        with pytest.raises(InputError, match="tokens_b must be"):
            module.forward_tokens(torch.zeros(1, 6, 64, 64), _tokens(1), _tokens(1, length=77))


def test_size_error_names_nearest_valid_sizes() -> None:
    with pytest.raises(InputSizeError) as info:
        check_input_size(100, 256)
    assert "height 100 (nearest valid: 96 or 128)" in str(info.value)
    with pytest.raises(InputSizeError, match="width 20 \\(nearest valid: 32\\)"):
        check_input_size(64, 20)
    check_input_size(32, 480)


@pytest.mark.parametrize("variant", TINY)
class TestImageEncoder(ModuleTester):
    @pytest.fixture(autouse=True)
    def _variant(self, variant: str) -> None:
        self.cfg = PRESETS[variant]

    def make(self) -> nn.Module:
        return CLIPResNetWithAttention(self.cfg) if self.cfg.backbone == "rn50" else CLIPVisionTransformer(self.cfg)

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        return (torch.randn(batch, 3, size, size),)

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        c = self.cfg.level_channels
        levels = [(batch, c[i], size // s, size // s) for i, s in enumerate((4, 8, 16, 32))]
        dense = size // (32 if self.cfg.backbone == "rn50" else 16)
        return [*levels, (batch, self.cfg.embed_dim), (batch, self.cfg.embed_dim, dense, dense)]


class TestTextEncoder(ModuleTester):
    cfg = PRESETS["tiny-vit"]
    sizes = (64,)

    def make(self) -> nn.Module:
        encoder = CLIPTextContextEncoder(self.cfg)
        self.contexts = torch.randn(1, 1, 13, self.cfg.text_width, requires_grad=True)
        return encoder

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        return _tokens(batch), self.contexts

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        return [(batch, 2, self.cfg.embed_dim)]

    def test_end_of_text_is_shifted_by_context(self) -> None:
        """Changing tokens after EOT changes nothing (causal mask + EOT pick at argmax + 13)."""
        enc = self.make().eval()
        ids = _tokens(1)
        other = ids.clone()
        other[..., 20:30] = 5  # after EOT (index 9), below the EOT id
        with torch.inference_mode():
            torch.testing.assert_close(enc(ids, self.contexts), enc(other, self.contexts), rtol=0, atol=0)
            moved = ids.clone()
            moved[..., 5] = 7  # before EOT: must matter
            assert not torch.equal(enc(ids, self.contexts), enc(moved, self.contexts))

    def test_wrong_prompt_length(self) -> None:
        with pytest.raises(ValueError, match="context_length=64"):
            self.make()(_tokens(1, length=77), self.contexts)


class TestContextDecoder(ModuleTester):
    cfg = PRESETS["tiny-rn50"]
    sizes = (64,)

    def make(self) -> nn.Module:
        return ContextDecoder(self.cfg)

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        return torch.randn(batch, 2, self.cfg.embed_dim), torch.randn(batch, 5, self.cfg.embed_dim)

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        return [(batch, 2, self.cfg.embed_dim)]


class TestNeck(ModuleTester):
    sizes = (64, 96)

    def make(self) -> nn.Module:
        return FPN([8, 16, 12, 20], 32)

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        return ([torch.randn(batch, c, size // s, size // s) for c, s in ((8, 4), (16, 8), (12, 16), (20, 32))],)

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        return [(batch, 32, size // s, size // s) for s in (4, 8, 16, 32)]


class TestSELayer(ModuleTester):
    sizes = (64,)

    def make(self) -> nn.Module:
        return SELayerV2(48, 16, 8)

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        return (torch.randn(batch, 48, 5, 7),)

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        return [(batch, 16, 5, 7)]


class TestDecodeHead(ModuleTester):
    cfg = PRESETS["tiny-vit"]
    sizes = (64, 96)

    def make(self) -> nn.Module:
        return SwinTextDecode(self.cfg)

    def inputs(self, batch: int, size: int) -> tuple[Any, ...]:
        feats = [torch.randn(batch, 256, size // s, size // s) for s in (4, 8, 16, 32)]
        return feats, torch.randn(batch, 2, self.cfg.embed_dim), torch.randn(batch, 2, self.cfg.embed_dim)

    def expected_shapes(self, batch: int, size: int) -> list[tuple[int, ...]]:
        return [(batch, 2, size // 4, size // 4)]


def test_relative_position_index_and_shift_mask() -> None:
    idx = relative_position_index(7)
    assert idx.dtype == torch.int64 and tuple(idx.shape) == (49, 49)
    assert int(idx.min()) == 0 and int(idx.max()) == 168 and int(idx[0, 0]) == 84
    assert torch.equal(idx.diagonal(), torch.full((49,), 84))
    mask = shifted_window_mask(14, 14, 7, 3, torch.device("cpu"))
    assert tuple(mask.shape) == (4, 49, 49)
    assert bool((mask[0] == 0).all())  # the top-left window is one region
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_drop_path_only_in_training() -> None:
    x = torch.ones(64, 3, 5)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.5, training=True)
    per_sample = y.reshape(64, -1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert bool((per_sample == per_sample[:, :1]).all())  # whole samples are dropped or kept
    assert linear_rates(0.2, 2) == [0.0, 0.2] and linear_rates(0.1, 1) == [0.0]
