"""The training loop runs captured by default and gives the eager loop's history and weights."""
import numpy as np

import cnnnumba as cn
from cnnnumba import models, optim, train
from cnnnumba.data import ArrayDataset, DataLoader


def _fit(eager):
    cn.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 40)
    model = cn.nn.Sequential(*list(models.small_cnn())[:-1], cn.nn.Dropout(0.2), list(models.small_cnn())[-1])
    optimizer = optim.Adam(model.parameters(), lr=2e-3)
    # 40 images in batches of 16: the last batch of 8 is a second shape, recorded once per epoch's end
    loader = DataLoader(ArrayDataset(images, labels), batch_size=16, shuffle=True, seed=0)
    history = train.fit(model, optimizer, loader, 2, progress=False, log=None, eager=eager)
    return history, model.state_dict()


def test_captured_fit_matches_eager_fit():
    captured_history, captured_state = _fit(eager=False)
    eager_history, eager_state = _fit(eager=True)
    for captured, eager in zip(captured_history, eager_history):
        np.testing.assert_allclose(captured["train_loss"], eager["train_loss"], rtol=1e-5)
        assert captured["train_accuracy"] == eager["train_accuracy"]
    for key in eager_state:
        np.testing.assert_allclose(captured_state[key], eager_state[key], rtol=2e-4, atol=2e-5, err_msg=key)
