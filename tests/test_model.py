import torch

from course_fixtures import SeminarCRNN
from kws_export.config import CRNNConfig
from kws_export.model import CRNN, count_parameters


def test_seminar_defaults_parameter_count_and_names():
    model = CRNN(CRNNConfig())
    assert count_parameters(model) == 70443
    names = set(model.state_dict())
    assert {"conv.0.weight", "conv.0.bias", "classifier.weight", "classifier.bias"} <= names
    assert {f"gru.{w}_l{i}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for i in (0, 1)} <= names
    assert {f"attention.energy.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")} <= names
    assert names == set(SeminarCRNN().state_dict())


def test_seminar_state_dict_gives_same_logits():
    torch.manual_seed(1)
    seminar = SeminarCRNN().eval()
    model = CRNN(CRNNConfig()).eval()
    model.load_state_dict(seminar.state_dict(), strict=True)
    x = torch.randn(2, 40, 101)
    assert torch.allclose(model.forward_features(x), seminar(x), atol=1e-6)


def test_derived_sizes():
    cfg = CRNNConfig()
    assert cfg.conv_freq == 18 and cfg.gru_input == 144
    assert cfg.clip_frames == 101 and cfg.clip_steps == 11


def test_attention_weights_sum_to_one_and_prob_range():
    model = CRNN(CRNNConfig(channels=4, hidden=16)).eval()
    logits, alpha = model.forward_features(torch.randn(3, 40, 101), return_attention=True)
    assert logits.shape == (3, 2) and alpha.shape == (3, 11)
    assert torch.allclose(alpha.sum(-1), torch.ones(3))
    p = model.keyword_prob(torch.randn(3, 16000))
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()


def test_config_round_trip_and_validation():
    import pytest

    from kws_export.errors import KWSError

    cfg = CRNNConfig(channels=4, hidden=16, keyword="hey kws")
    assert CRNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(KWSError):
        CRNNConfig(hidden=0)
    with pytest.raises(KWSError):
        CRNNConfig.from_dict({"bogus": 1})
