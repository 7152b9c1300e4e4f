from __future__ import annotations

import pytest
import torch
import torch._dynamo
from lightning.pytorch import Trainer

from tests.conftest import quiet_trainer
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.compilation import CompileUnavailableError, is_compiled, require_compile_support
from wrncifar.models.wideresnet import WideResNet


def small_net() -> WideResNet:
    return WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1)


def tiny_data() -> SyntheticCIFAR100DataModule:
    return SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=4, test_per_class=2, val_per_class=1, batch_size=8, num_workers=0
    )


def cpu_trainer(tmp_path, **kwargs) -> Trainer:
    return quiet_trainer(default_root_dir=tmp_path, **kwargs)


@pytest.mark.slow
def test_compiled_checkpoint_loads_into_an_uncompiled_model_and_back(tmp_path) -> None:
    torch.manual_seed(0)
    compiled = ImageClassifier(small_net(), compile=True)
    cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(compiled, datamodule=tiny_data())
    assert is_compiled(compiled.net)
    ckpt = tmp_path / "compiled.ckpt"
    compiled.trainer.save_checkpoint(ckpt)

    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    plain = ImageClassifier(small_net())
    plain.load_state_dict(state, strict=True)
    images = torch.randn(4, 3, 32, 32)
    compiled.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), plain(images), rtol=1e-4, atol=1e-5)

    # And back: the same weights tested by a compiled model give the uncompiled model's metrics.
    results = []
    for module in (ImageClassifier(small_net()), ImageClassifier(small_net(), compile=True)):
        results.append(cpu_trainer(tmp_path).test(module, datamodule=tiny_data(), ckpt_path=ckpt, weights_only=True))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)


def test_compile_without_dynamo_support_says_how_to_turn_it_off(monkeypatch) -> None:
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(CompileUnavailableError, match=r"model\.compile=false"):
        ImageClassifier(small_net(), compile=True)
    ImageClassifier(small_net(), compile=False)  # the default needs nothing


def test_compile_on_cuda_without_triton_says_so(monkeypatch) -> None:
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    with pytest.raises(CompileUnavailableError, match=r"needs Triton.*model\.compile=false"):
        require_compile_support(torch.device("cuda"))
    require_compile_support(torch.device("cpu"))


def test_uncompiled_network_is_not_reported_compiled() -> None:
    net = small_net()
    assert not is_compiled(net)
    net.compile()
    assert is_compiled(net)


def deep_net() -> WideResNet:
    """Three blocks per stage: each stage's second and third block have one shape. No dropout: compiled code
    draws other random numbers than eager code, and training-mode outputs are compared below."""
    return WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=3, dropout=0.0)


@pytest.mark.slow
def test_block_scope_compiles_each_shape_once_in_place_and_matches_eager(tmp_path, caplog) -> None:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    plain = ImageClassifier(deep_net())
    compiled = ImageClassifier(deep_net(), compile=True, compile_scope="blocks")
    compiled.load_state_dict(plain.state_dict())
    torch._dynamo.reset()
    counters.clear()
    # One training step: 9 blocks, 2 shapes per stage (the first block changes the width or the map size).
    cpu_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(compiled, datamodule=tiny_data())
    assert all(is_compiled(block) for block in compiled.net.residual_blocks())
    assert not is_compiled(compiled.net)
    assert counters["stats"]["unique_graphs"] == 6
    assert compiled.state_dict().keys() == plain.state_dict().keys()

    # Evaluation adds variants per block (eval mode; full and shorter last batches): none falls back to eager
    # for want of Dynamo's room for recompiles (8 variants of one piece of code by default).
    caplog.set_level("WARNING", logger="torch._dynamo")
    compiled.load_state_dict(plain.state_dict())
    compiled.eval(), plain.eval()
    for batch in (8, 5, 3):
        images = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(compiled(images), plain(images), rtol=1e-4, atol=1e-5)
    compiled.train(), plain.train()
    for batch in (8, 5, 3):
        images = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(compiled(images), plain(images), rtol=1e-4, atol=1e-5)
    assert "recompile_limit" not in caplog.text and "cache_size_limit" not in caplog.text


def test_block_scope_needs_a_network_that_lists_its_blocks() -> None:
    class Plain(torch.nn.Module):
        num_classes = 10

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"compile_scope=blocks needs .*Plain.*model\.compile_scope=network"):
        ImageClassifier(Plain(), compile=True, compile_scope="blocks")
    with pytest.raises(ValueError, match=r"compile_scope must be one of network, blocks, got 'layers'"):
        ImageClassifier(small_net(), compile=True, compile_scope="layers")
    ImageClassifier(Plain(), compile=True)  # the whole network compiles whatever it is


@pytest.mark.slow
def test_evaluation_runs_the_network_eagerly_unless_compile_eval(tmp_path) -> None:
    """Validation and test of a compiled model compile nothing by default (their graphs would cost more than CIFAR's
    evaluation images save), and give what the compiled evaluation gives."""
    from torch._dynamo.utils import counters

    graphs, metrics = {}, {}
    for compile_eval in (False, True):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = ImageClassifier(small_net(), compile=True, compile_eval=compile_eval)
        trainer = cpu_trainer(tmp_path, max_steps=1, limit_val_batches=0)
        trainer.fit(model, datamodule=tiny_data())
        trained = counters["stats"]["unique_graphs"]
        assert trained >= 1  # the training step is compiled either way
        evaluation = cpu_trainer(tmp_path)
        (metrics[compile_eval],) = evaluation.validate(model, datamodule=tiny_data())
        evaluation.test(model, datamodule=tiny_data())
        graphs[compile_eval] = counters["stats"]["unique_graphs"] - trained
    assert graphs[False] == 0 and graphs[True] >= 1
    assert metrics[False] == pytest.approx(metrics[True], rel=1e-4)
