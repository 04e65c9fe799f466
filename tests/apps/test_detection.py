"""The detector application: boxes, NMS, AP by hand, FCOS assignment, attention distillation, pruning."""

import numpy as np
import pytest
import torch

from prunekit.apps.detection import (TinyFCOS, _centres, _targets, attention_distillation_loss, average_precision,
                                     box_iou, detect, detection_loss, mean_average_precision, measure,
                                     mosaic_detection_set, nms, train_detector_)
from prunekit.structured import prune_ as structured_prune_


def test_box_iou_and_nms_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    # box 1 overlaps box 0 with IoU 0.81 and scores lower: suppressed
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou=0.5).tolist() == [0, 2]
    assert nms(boxes, torch.tensor([0.8, 0.9, 0.7]), iou=0.5).tolist() == [1, 2]


def test_average_precision_by_hand():
    # 2 ground truths; detections by score: TP, FP, TP → precision 1, 1/2, 2/3 at recall .5, .5, 1
    # monotone envelope: recall 0→.5 at precision 1, .5→1 at 2/3 → AP = .5 + .5·2/3
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), "labels": torch.tensor([3, 3])}]
    det = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60], [20.0, 20, 30, 31]]),
            "labels": torch.tensor([3, 3, 3]), "scores": torch.tensor([0.9, 0.8, 0.7])}]
    assert mean_average_precision(det, gt) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    # a duplicate of a matched box is a false positive
    det2 = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]]), "labels": torch.tensor([3, 3]),
             "scores": torch.tensor([0.9, 0.8])}]
    assert mean_average_precision(det2, gt) == pytest.approx(0.5)


def test_fcos_assignment_takes_the_smallest_box():
    centres = _centres(2, 2, 4)  # (2,2), (6,2), (2,6), (6,6)
    target = {"boxes": torch.tensor([[0.0, 0, 8, 8], [4.0, 0, 8, 4]]), "labels": torch.tensor([1, 2])}
    cls, ltrb, pos = _targets(centres, target, 3)
    assert pos.tolist() == [True, True, True, True]
    assert cls.argmax(1).tolist() == [1, 2, 1, 1]  # (6,2) lies in both: the smaller box (class 2) wins
    torch.testing.assert_close(ltrb[1], torch.tensor([2.0, 2.0, 2.0, 2.0]))


def test_mosaic_boxes_hold_the_items():
    imgs = torch.zeros(3, 1, 28, 28)
    imgs[:, 0, 5:20, 8:12] = 1.0
    x, t = mosaic_detection_set(imgs, torch.tensor([4, 4, 4]), n=5, canvas=40, max_objects=2, seed=1)
    for img, tgt in zip(x, t):
        assert 1 <= len(tgt["boxes"]) <= 2 and tgt["labels"].eq(4).all()
        for bx in tgt["boxes"]:
            x0, y0, x1, y1 = (int(v) for v in bx)
            assert (x1 - x0, y1 - y0) == (4, 15)
            assert img[0, y0:y1, x0:x1].eq(1).all()
        assert int(img.sum()) <= 60 * len(tgt["boxes"])


def test_attention_loss_ignores_channels_and_scale():
    f = torch.rand(2, 8, 6, 6)
    assert float(attention_distillation_loss([f], [torch.cat([f, f], 1) * 3])) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_distillation_loss([f], [torch.rand(2, 4, 6, 6)])) > 0


def test_pruned_detector_trains_and_keeps_its_outputs():
    torch.manual_seed(0)
    imgs = torch.zeros(8, 1, 28, 28)
    imgs[:, 0, 4:24, 6:22] = 1.0
    x, t = mosaic_detection_set(imgs, torch.arange(8) % 2, n=32, canvas=32, max_objects=1, seed=0)
    model = TinyFCOS(classes=2, widths=(8, 16, 16), tower=16)
    losses = train_detector_(model, x, t, epochs=4, lr=0.02, batch_size=8, bn_l1=1e-4)
    assert losses[-1] < losses[0]
    teacher = TinyFCOS(classes=2, widths=(8, 16, 16), tower=16)
    teacher.load_state_dict(model.state_dict())
    before = measure(model, x, t)
    rep = structured_prune_(model, x[:2], sparsity=0.5, importance="bn_scale",
                            ignore=[model.cls_logits, model.bbox_pred, model.centerness])
    assert rep.params_after < 0.6 * rep.params_before
    cls, box, ctr = model(x[:2])
    assert cls.shape == (2, 2, 8, 8) and box.shape == (2, 4, 8, 8) and ctr.shape == (2, 1, 8, 8)
    losses = train_detector_(model, x, t, epochs=1, lr=0.01, batch_size=8, teacher=teacher, distill=1.0)
    after = measure(model, x, t)
    assert after.params == rep.params_after and after.macs < before.macs
    assert 0.0 <= after.map50 <= 1.0 and np.isfinite(losses).all()
    assert len(detect(model, x[:3])) == 3
    with pytest.raises(ValueError, match="teacher"):
        train_detector_(model, x, t, distill=1.0, batch_size=8)
