import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.data import concept_clusters, embed, embed_texts, score

from tests.tolerances import tol


def test_embed_applies_the_model_to_each_input():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x = torch.randn(10, 6)
    got = embed(model, TensorDataset(x, torch.zeros(10)), batch_size=4)
    with torch.no_grad():
        # batches of 4 against all 10 rows: another BLAS kernel may sum the 6 products and the bias in another
        # order (Σ|terms| ≈ 2 for these weights)
        np.testing.assert_allclose(got, model(x).numpy(), **tol(np.float32, k=7, scale=4))
    with pytest.raises(ValueError, match="empty"):
        embed(model, TensorDataset(torch.zeros(0, 6)))


def test_text_embeddings_are_mean_pooled_over_real_tokens_only(tiny_encoder):
    texts = ["a cat", "a much longer sentence about dogs and their owners", "hello"]
    batch = embed_texts(texts, model_path=tiny_encoder, batch_size=3)
    alone = np.vstack([embed_texts([t], model_path=tiny_encoder) for t in texts])
    assert batch.shape == (3, 32)
    # padding does not leak into the mean; a padded batch runs other kernels, so the 2 layers' sums (hidden 32,
    # MLP 64, up to 16 tokens, about 300 terms along the path) come in another order
    np.testing.assert_allclose(batch, alone, **tol(np.float32, k=300))
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="sequence of strings"):
        embed_texts("not a list", model_path=tiny_encoder)


@pytest.mark.slow
def test_minilm_places_paraphrases_together_and_scores_texts():
    _minilm_or_skip()
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
    e = embed_texts(texts)
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > 0.8 and e[0] @ e[2] < 0.3
    cats = ["The cat sleeps on the sofa.", "My kitten loves to chase mice.", "Cats purr when they are happy.",
            "A tabby cat sat by the window."]
    money = ["Interest rates rose again this quarter.", "The stock exchange closed lower.",
             "Investors sold shares after the report.", "Bond yields climbed on inflation fears."]
    clusters = concept_clusters(embed_texts(cats + money), n_clusters=2, seed=0)
    assert len(set(clusters.labels[:4])) == 1 and len(set(clusters.labels[4:])) == 1
    assert clusters.labels[0] != clusters.labels[4]
    s = score(cats + money, "prototypes", n_clusters=2, seed=0, progress=False)
    assert s.shape == (8,) and (s > 0).all() and (s < 1.0).all()
