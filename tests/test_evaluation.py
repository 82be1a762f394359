"""window_nll: reading the prefix with a progress bar (model.ingest) scores the same as one call."""

import pytest
import torch

from memlong.evaluation import window_nll


@pytest.mark.parametrize("use_memory", [True, False])
def test_window_nll_progress_path_matches(memlong_model, use_memory):
    m, _ = memlong_model
    g = torch.Generator().manual_seed(3)
    windows = [torch.randint(0, 100, (150,), generator=g) for _ in range(2)]
    plain = window_nll(m, windows, 40, use_memory=use_memory)
    shown = window_nll(m, windows, 40, use_memory=use_memory, progress=True)
    assert shown[1] == plain[1] == 80
    assert shown[0] == pytest.approx(plain[0], rel=1e-5)
    assert window_nll(m, windows, 40)[0] != pytest.approx(window_nll(m, windows, 40, use_memory=False)[0])
