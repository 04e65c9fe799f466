"""A small FCOS-layout detector on Fashion-MNIST mosaics, pruned by group channel pruning and recovered
with spatial attention distillation, after "Group channel pruning and spatial attention distilling for
object detection" (Chu et al., Applied Intelligence 2022).

- data: :func:`mosaic_detection_set` places 1..k Fashion-MNIST items on a blank canvas; each box is the
  item's tight pixel box, its label the item's class;
- model: :class:`TinyFCOS`, FCOS's layout (Tian et al. 2019) at one level: a convolutional backbone, a
  shared head tower, per-location class logits, left/top/right/bottom distances and centre-ness; randomly
  initialised, pure torch (no torchvision C ops);
- pruning: channels removed by :func:`prunekit.structured.prune_` with BN-scale importance (Network
  Slimming) after training with an L1 penalty on the BN scales, each coupled group losing the same share
  (groups of channels are what the dependency graph finds), the three output convolutions kept;
- recovery: fine-tuning with the detection loss plus the spatial attention distillation loss
  (:func:`attention_distillation_loss`: the L2 distance between normalised channel-pooled activation
  maps of student and teacher, Zagoruyko & Komodakis 2017);
- measure: mAP at IoU 0.5 (:func:`mean_average_precision`, all-point interpolated, VOC style) after a
  pure-torch class-wise NMS (:func:`nms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .batches import minibatches, steps_of

Target = dict[str, Tensor]  # {"boxes": (k, 4) xyxy, "labels": (k,)}


# ---------------------------------------------------------------- data

def mosaic_detection_set(images: Tensor, labels: Tensor, n: int, canvas: int = 48, max_objects: int = 2,
                         seed: int = 0, threshold: float = 0.1) -> tuple[Tensor, list[Target]]:
    """``n`` canvases of ``canvas``² pixels, each holding 1..``max_objects`` items drawn from ``images``
    (N, 1, 28, 28, values in [0, 1]) pasted at random places (later items over earlier ones, overlaps
    allowed up to a third of the smaller box). Boxes are each item's pixels above ``threshold``."""
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"images must be (N, 1, 28, 28), got {tuple(images.shape)}")
    if canvas < 28:
        raise ValueError(f"canvas must be at least 28 pixels, got {canvas}")
    if n < 1 or max_objects < 1:
        raise ValueError(f"n and max_objects must be positive, got {n} and {max_objects}")
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 1, canvas, canvas)
    targets: list[Target] = []
    for i in range(n):
        k = int(torch.randint(1, max_objects + 1, (1,), generator=g))
        boxes: list[list[float]] = []
        classes: list[int] = []
        for _ in range(20 * k):
            if len(boxes) == k:
                break
            j = int(torch.randint(0, len(images), (1,), generator=g))
            item = images[j, 0]
            ys, xs = torch.nonzero(item > threshold, as_tuple=True)
            if len(ys) == 0:
                continue
            oy, ox = (int(v) for v in torch.randint(0, canvas - 27, (2,), generator=g))
            box = [float(xs.min() + ox), float(ys.min() + oy), float(xs.max() + ox + 1), float(ys.max() + oy + 1)]
            if boxes and box_iou(torch.tensor([box]), torch.tensor(boxes)).max() > 0.2:
                continue
            region = out[i, 0, oy:oy + 28, ox:ox + 28]
            out[i, 0, oy:oy + 28, ox:ox + 28] = torch.maximum(region, item)
            boxes.append(box)
            classes.append(int(labels[j]))
        targets.append({"boxes": torch.tensor(boxes).view(-1, 4), "labels": torch.tensor(classes, dtype=torch.long)})
    return out, targets


# ---------------------------------------------------------------- model

def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyFCOS(nn.Module):
    """FCOS at one feature level (stride 4): backbone → shared tower → (class logits, ltrb distances in
    strides, centre-ness logit) at every location. ``features(x)`` gives the backbone's maps (for
    attention distillation)."""

    def __init__(self, classes: int = 10, widths: Sequence[int] = (16, 32, 32), tower: int = 32) -> None:
        super().__init__()
        a, b, c = widths
        self.stem = _conv(1, a, 2)
        self.stage1 = _conv(a, b, 2)
        self.stage2 = _conv(b, c)
        self.tower = _conv(c, tower)
        self.cls_logits = nn.Conv2d(tower, classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(tower, 4, 3, 1, 1)
        self.centerness = nn.Conv2d(tower, 1, 3, 1, 1)
        self.stride = 4
        self.classes = classes
        nn.init.constant_(self.cls_logits.bias, -float(np.log((1 - 0.01) / 0.01)))  # FCOS's prior 0.01

    def features(self, x: Tensor) -> list[Tensor]:
        f1 = self.stage1(self.stem(x))
        return [f1, self.stage2(f1)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = self.tower(self.features(x)[-1])
        return self.cls_logits(t), nn.functional.relu(self.bbox_pred(t)), self.centerness(t)


# ---------------------------------------------------------------- boxes

def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), xyxy."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: Tensor, scores: Tensor, iou: float = 0.5) -> Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first."""
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    ious = box_iou(boxes, boxes)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ious[i] > iou
    return torch.tensor(keep, dtype=torch.long)


def _centres(h: int, w: int, stride: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride], -1).float()


# ---------------------------------------------------------------- loss

def _targets(centres: Tensor, target: Target, classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """FCOS assignment: a location inside a box is positive for the smallest such box."""
    n = len(centres)
    cls = torch.zeros(n, classes)
    ltrb = torch.zeros(n, 4)
    pos = torch.zeros(n, dtype=torch.bool)
    boxes, labels = target["boxes"], target["labels"]
    if len(boxes):
        x, y = centres[:, 0:1], centres[:, 1:2]
        d = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)  # (n, k, 4)
        inside = d.min(-1).values > 0
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(n, -1).clone()
        area[~inside] = float("inf")
        best = area.argmin(1)
        pos = inside.any(1)
        ltrb = d[torch.arange(n), best]
        cls[pos, labels[best[pos]]] = 1.0
    return cls, ltrb, pos


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017), summed."""
    p = logits.sigmoid()
    ce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pt = p * targets + (1 - p) * (1 - targets)
    w = alpha * targets + (1 - alpha) * (1 - targets)
    return (w * ce * (1 - pt) ** gamma).sum()


def detection_loss(model: TinyFCOS, outputs: tuple[Tensor, Tensor, Tensor], targets: list[Target]) -> Tensor:
    """FCOS's loss: focal loss on classes, IoU loss (−log IoU) on positive locations' distances,
    BCE on their centre-ness; each normalised by the number of positives."""
    cls_out, box_out, ctr_out = outputs
    b, c, h, w = cls_out.shape
    centres = _centres(h, w, model.stride)
    total_cls, total_box, total_ctr, npos = cls_out.new_zeros(()), cls_out.new_zeros(()), cls_out.new_zeros(()), 0
    for i in range(b):
        cls_t, ltrb_t, pos = _targets(centres, targets[i], c)
        logits = cls_out[i].flatten(1).T
        total_cls = total_cls + sigmoid_focal_loss(logits, cls_t)
        if pos.any():
            pred = box_out[i].flatten(1).T[pos] * model.stride
            tgt = ltrb_t[pos]
            inter = (torch.minimum(pred[:, 0], tgt[:, 0]) + torch.minimum(pred[:, 2], tgt[:, 2])) * \
                    (torch.minimum(pred[:, 1], tgt[:, 1]) + torch.minimum(pred[:, 3], tgt[:, 3]))
            union = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3]) + (tgt[:, 0] + tgt[:, 2]) * (tgt[:, 1] + tgt[:, 3]) - inter
            total_box = total_box - torch.log((inter + 1) / (union + 1)).sum()
            lr, tb = tgt[:, [0, 2]], tgt[:, [1, 3]]
            ctr_t = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))
            total_ctr = total_ctr + nn.functional.binary_cross_entropy_with_logits(
                ctr_out[i].flatten()[pos], ctr_t, reduction="sum")
            npos += int(pos.sum())
    npos = max(npos, 1)
    return (total_cls + total_box + total_ctr) / npos


def spatial_attention(f: Tensor) -> Tensor:
    """A feature map's spatial attention: the channel mean of squared activations, flattened and
    L2-normalised per image (Zagoruyko & Komodakis 2017)."""
    return nn.functional.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def attention_distillation_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Sum over feature levels of the mean squared distance between student and teacher attention maps
    (the maps need the same spatial size, not the same channel count)."""
    if len(student) != len(teacher):
        raise ValueError(f"student gives {len(student)} feature maps, teacher {len(teacher)}")
    return sum(((spatial_attention(s) - spatial_attention(t)) ** 2).sum(1).mean() for s, t in zip(student, teacher))


# ---------------------------------------------------------------- training

def train_detector_(model: TinyFCOS, images: Tensor, targets: list[Target], *, epochs: float = 1.0, lr: float = 0.01,
                    batch_size: int = 32, seed: int = 0, bn_l1: float = 0.0, teacher: TinyFCOS | None = None,
                    distill: float = 0.0) -> list[float]:
    """Train ``model`` in place (SGD, momentum 0.9, cosine schedule); ``bn_l1`` adds Network Slimming's
    L1 penalty on BN scales; ``teacher`` with ``distill`` > 0 adds ``distill`` × the attention
    distillation loss against the teacher's backbone maps. Returns the loss of every step."""
    if len(images) != len(targets) or len(images) < batch_size:
        raise ValueError(f"need as many targets as images and at least one batch of {batch_size}, "
                         f"got {len(images)} images and {len(targets)} targets")
    if distill > 0 and teacher is None:
        raise ValueError("distill > 0 needs teacher=, the unpruned detector")
    steps = steps_of(len(images), batch_size, epochs)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if teacher is not None:
        teacher.eval()
    losses: list[float] = []
    model.train()
    for idx in minibatches(len(images), batch_size, epochs, seed):
        x = images[idx]
        loss = detection_loss(model, model(x), [targets[i] for i in idx.tolist()])
        if bn_l1 > 0:
            loss = loss + bn_l1 * sum(m.weight.abs().sum() for m in bns)
        if teacher is not None and distill > 0:
            with torch.no_grad():
                t_feats = teacher.features(x)
            loss = loss + distill * attention_distillation_loss(model.features(x), t_feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ---------------------------------------------------------------- inference and mAP

@torch.no_grad()
def detect(model: TinyFCOS, images: Tensor, score_threshold: float = 0.05, iou: float = 0.5,
           max_detections: int = 20) -> list[Target]:
    """Detections per image: boxes, labels and scores (√(class · centre-ness), FCOS's ranking), class-wise NMS."""
    model.eval()
    cls_out, box_out, ctr_out = model(images)
    b, c, h, w = cls_out.shape
    centres = _centres(h, w, model.stride)
    out = []
    for i in range(b):
        scores = (cls_out[i].flatten(1).T.sigmoid() * ctr_out[i].flatten()[:, None].sigmoid()).sqrt()
        loc, cls = torch.nonzero(scores > score_threshold, as_tuple=True)
        s = scores[loc, cls]
        d = box_out[i].flatten(1).T[loc] * model.stride
        boxes = torch.stack([centres[loc, 0] - d[:, 0], centres[loc, 1] - d[:, 1],
                             centres[loc, 0] + d[:, 2], centres[loc, 1] + d[:, 3]], -1)
        keep_all = []
        for k in cls.unique().tolist():
            rows = torch.nonzero(cls == k).flatten()
            keep_all.append(rows[nms(boxes[rows], s[rows], iou)])
        keep = torch.cat(keep_all) if keep_all else torch.zeros(0, dtype=torch.long)
        keep = keep[s[keep].argsort(descending=True)][:max_detections]
        out.append({"boxes": boxes[keep], "labels": cls[keep], "scores": s[keep]})
    return out


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision-recall curve with precision made monotone (all-point interpolation)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(detections: list[Target], targets: list[Target], iou: float = 0.5) -> float:
    """mAP at one IoU threshold over the classes that have ground truth: each detection, highest score
    first, matches the unmatched ground-truth box of its class with the highest IoU ≥ ``iou``."""
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} images")
    classes = sorted({int(c) for t in targets for c in t["labels"]})
    if not classes:
        raise ValueError("no ground-truth boxes: mAP is undefined")
    aps = []
    for c in classes:
        n_gt = sum(int((t["labels"] == c).sum()) for t in targets)
        rows = []  # (score, image, box)
        for i, d in enumerate(detections):
            for j in torch.nonzero(d["labels"] == c).flatten().tolist():
                rows.append((float(d["scores"][j]), i, d["boxes"][j]))
        rows.sort(key=lambda r: -r[0])
        used = {i: torch.zeros(int((t["labels"] == c).sum()), dtype=torch.bool) for i, t in enumerate(targets)}
        tp = np.zeros(len(rows))
        for k, (_, i, box) in enumerate(rows):
            gt = targets[i]["boxes"][targets[i]["labels"] == c]
            if len(gt) == 0:
                continue
            ious = box_iou(box[None], gt)[0]
            ious[used[i]] = -1
            j = int(ious.argmax())
            if ious[j] >= iou:
                used[i][j] = True
                tp[k] = 1
        ctp = np.cumsum(tp)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, len(rows) + 1) if rows else np.zeros(0)
        aps.append(average_precision(recall, precision))
    return float(np.mean(aps))


@dataclass
class DetectionFigures:
    """mAP@0.5, parameters and MACs of one detector."""

    map50: float
    params: int
    macs: int


def measure(model: TinyFCOS, images: Tensor, targets: list[Target]) -> DetectionFigures:
    """mAP@0.5 on (images, targets), parameter count and MACs per image."""
    from ..metrics.macs import count_macs

    dets = []
    for start in range(0, len(images), 256):
        dets += detect(model, images[start:start + 256])
    return DetectionFigures(mean_average_precision(dets, targets), sum(p.numel() for p in model.parameters()),
                            count_macs(model, images[:1]))
