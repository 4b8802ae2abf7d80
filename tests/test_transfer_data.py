"""The transfer data side: built-in COCO / ADE20K sets, the datasets' policies on bad input,
COCO results and scoring, mIoU, and the prepare_coco / prepare_ade20k stage."""
from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.config import AdeBuiltinParams, CocoBuiltinParams, SegmentationRecipe
from pipeline.transfer.ade20k import ADE20K, IGNORE, MIoU
from pipeline.transfer.builtin import generate_ade20k, generate_coco
from pipeline.transfer.coco import (COCO_CATEGORIES, CocoDetection, TransferDataError, cat_id_to_contiguous,
                                    coco_results, collate, contiguous_to_cat_id, evaluate)

COCO_CFG = CocoBuiltinParams(train_images=24, val_images=6, min_side=96, max_side=128, categories=4)
ADE_CFG = AdeBuiltinParams(train_images=6, val_images=3, min_side=96, max_side=128, classes=6)
RECIPE = SegmentationRecipe(scale=(256, 64), crop_size=64)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "builtin"
    generate_coco(COCO_CFG, 0, root, workers=1)
    return root


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ade") / "builtin"
    generate_ade20k(ADE_CFG, 0, root, workers=1)
    return root


# --- generators -----------------------------------------------------------------------------------


def test_generators_are_deterministic_whatever_the_workers(coco_root, ade_root, tmp_path):
    generate_coco(COCO_CFG, 0, tmp_path / "coco2", workers=2)
    generate_ade20k(ADE_CFG, 0, tmp_path / "ade2", workers=2)
    assert digest(coco_root) == digest(tmp_path / "coco2")
    assert digest(ade_root) == digest(tmp_path / "ade2")
    names = set(digest(coco_root))
    assert {"annotations/instances_train2017.json", "annotations/instances_val2017.json",
            "train2017/000000000001.jpg", "val2017/000001000001.jpg"} <= names
    assert {"images/training/ADE_train_00000001.jpg", "annotations/training/ADE_train_00000001.png",
            "images/validation/ADE_val_00000003.jpg"} <= set(digest(ade_root))
    generate_coco(COCO_CFG, 1, tmp_path / "coco3", workers=1)
    assert digest(tmp_path / "coco3")["train2017/000000000001.jpg"] != digest(coco_root)["train2017/000000000001.jpg"]


def test_coco_json_loads_in_pycocotools_with_every_annotation_kind(coco_root):
    from pycocotools import mask as mask_utils

    from pipeline.transfer.coco import quiet_coco

    kinds = set()
    for split in ("train", "val"):
        coco = quiet_coco(coco_root / "annotations" / f"instances_{split}2017.json")
        assert [c["id"] for c in coco.dataset["categories"]] == [c["id"] for c in COCO_CATEGORIES]
        assert {a["category_id"] for a in coco.dataset["annotations"]} <= {c["id"] for c in COCO_CATEGORIES[:4]}
        for ann in coco.dataset["annotations"]:
            segm = ann["segmentation"]
            kind = "polygon" if isinstance(segm, list) else "crowd_rle" if ann["iscrowd"] else "rle"
            assert kind != "crowd_rle" or isinstance(segm["counts"], list)  # crowd: uncompressed, as COCO's
            assert kind != "rle" or isinstance(segm["counts"], str)
            kinds.add(kind)
            rle = coco.annToRLE(ann)  # pycocotools reads every kind, and box and area agree with it
            assert np.allclose(mask_utils.toBbox(rle), ann["bbox"]) and mask_utils.area(rle) == ann["area"]
    assert kinds == {"polygon", "rle", "crowd_rle"}


def test_ade_masks_hold_class_ids_and_some_unlabelled_pixels(ade_root):
    values = np.concatenate([np.asarray(Image.open(p)).ravel()
                             for p in sorted((ade_root / "annotations" / "training").glob("*.png"))])
    ids = set(np.unique(values).tolist())
    assert 0 in ids and ids <= set(range(ADE_CFG.classes + 1)) and len(ids) >= 4
    assert 0 < (values == 0).mean() < 0.1


def test_coco_objects_take_the_share_of_the_short_side_asked_for(coco_root):
    # object_size sizes the objects for the detectors' anchors (pipeline/config.py CocoBuiltinParams)
    raw = json.loads((coco_root / "annotations" / "instances_train2017.json").read_text())
    short = {im["id"]: min(im["width"], im["height"]) for im in raw["images"]}
    lo, hi = COCO_CFG.object_size
    shares = [max(a["bbox"][2:]) / short[a["image_id"]] for a in raw["annotations"] if not a["iscrowd"]]
    # outlines jitter a little past their radius; occlusion and clipping only shrink a box
    assert np.median(shares) > lo and max(shares) <= 1.15 * hi
    with pytest.raises(ValueError, match=r"object_size \[0\.5, 0\.2\]"):
        CocoBuiltinParams(object_size=(0.5, 0.2))


# --- COCO dataset ---------------------------------------------------------------------------------


def test_coco_categories_map_both_ways():
    assert len(COCO_CATEGORIES) == 80 and COCO_CATEGORIES[11]["name"] == "stop sign"
    assert contiguous_to_cat_id(11) == 13 and cat_id_to_contiguous(90) == 79
    assert all(cat_id_to_contiguous(contiguous_to_cat_id(i)) == i for i in range(80))
    with pytest.raises(ValueError, match="12"):
        cat_id_to_contiguous(12)


def test_coco_targets_boxes_labels_and_masks_agree(coco_root):
    ds = CocoDetection(coco_root, "train", masks=True, train=False)
    raw = json.loads((coco_root / "annotations" / "instances_train2017.json").read_text())
    assert ds.manifest["crowd"] == sum(a["iscrowd"] for a in raw["annotations"]) > 0
    for i in range(len(ds)):
        image, t = ds[i]
        h, w = t["orig_size"]
        assert image.shape == (3, h, w) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        boxes = t["boxes"]
        assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= torch.tensor([w, h])) & (boxes[:, 2:] > boxes[:, :2])).all()
        expected = sorted(cat_id_to_contiguous(a["category_id"]) for a in raw["annotations"]
                          if a["image_id"] == t["image_id"] and not a["iscrowd"])
        assert sorted(t["labels"].tolist()) == expected
        for box, mask in zip(boxes, t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert torch.equal(box, torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == len(targets) == 2


def test_coco_flip_is_a_function_of_seed_epoch_index_and_flips_everything(coco_root):
    a = CocoDetection(coco_root, "train", masks=True, train=True, seed=3)
    b = CocoDetection(coco_root, "train", masks=True, train=True, seed=3)
    draws = {}
    for e in (0, 1):
        a.set_epoch(e)
        draws[e] = [a.flipped(i) for i in range(len(a))]
    b.set_epoch(1)
    assert [b.flipped(i) for i in range(len(b))] == draws[1] != draws[0]
    assert 0 < sum(draws[0]) < len(a)  # p = 0.5

    plain = CocoDetection(coco_root, "train", masks=True, train=False)
    always = CocoDetection(coco_root, "train", masks=True, train=True, hflip=1.0)
    (img0, t0), (img1, t1) = plain[2], always[2]
    w = t0["orig_size"][1]
    assert torch.equal(img1, img0.flip(-1)) and torch.equal(t1["masks"], t0["masks"].flip(-1))
    assert torch.allclose(t1["boxes"][:, [0, 2]], w - t0["boxes"][:, [2, 0]])
    assert torch.equal(t1["boxes"][:, [1, 3]], t0["boxes"][:, [1, 3]])


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def awkward_coco(root: Path, split: str = "train") -> Path:
    """A COCO split holding one of each bad input of issue 11 item 7, beside usable objects."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(exist_ok=True)
    rgb = Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8))
    files = {"good.jpg": _jpeg(rgb), "gray.jpg": _jpeg(rgb.convert("L")), "cmyk.jpg": _jpeg(rgb.convert("CMYK")),
             "empty_anns.jpg": _jpeg(rgb)}
    for name, data in files.items():
        (root / f"{split}2017" / name).write_bytes(data)
    names = ["good.jpg", "gray.jpg", "cmyk.jpg", "empty_anns.jpg", "missing.jpg"]
    images = [{"id": i + 1, "file_name": n, "width": 80, "height": 60} for i, n in enumerate(names)]
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    anns = [
        dict(image_id=1, category_id=1, bbox=[10, 10, 20, 20], segmentation=square),  # usable
        dict(image_id=1, category_id=3, bbox=[70, 40, 20, 30], segmentation=[[70, 40, 80, 40, 80, 60]]),  # clipped
        dict(image_id=1, category_id=13, bbox=[5, 5, 0, 10], segmentation=square),  # zero width
        dict(image_id=1, category_id=1, bbox=[100, 5, 10, 10], segmentation=square),  # out of the image
        dict(image_id=1, category_id=12, bbox=[10, 10, 20, 20], segmentation=square),  # not a COCO category
        dict(image_id=2, category_id=90, bbox=[10, 10, 20, 20], segmentation=square + [[1, 2, 3, 4]]),  # 1 short polygon
        dict(image_id=2, category_id=2, bbox=[10, 10, 20, 20], segmentation=[[1, 2, 3, 4]]),  # no polygon left
        dict(image_id=3, category_id=2, bbox=[10, 10, 20, 20], segmentation=square),
        dict(image_id=3, category_id=1, bbox=[0, 0, 80, 60], iscrowd=1,
             segmentation={"counts": [0, 4800], "size": [60, 80]}),  # crowd
        dict(image_id=5, category_id=1, bbox=[10, 10, 20, 20], segmentation=square),  # its image is missing
        dict(image_id=77, category_id=1, bbox=[10, 10, 20, 20], segmentation=square),  # no such image
    ]
    for k, a in enumerate(anns):
        a.update(id=k + 1, area=a["bbox"][2] * a["bbox"][3], iscrowd=a.get("iscrowd", 0))
    doc = {"images": images, "annotations": anns, "categories": COCO_CATEGORIES}
    path = root / "annotations" / f"instances_{split}2017.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_bad_input_is_kept_clipped_or_skipped_and_counted(tmp_path):
    awkward_coco(tmp_path, "train")
    ds = CocoDetection(tmp_path, "train", masks=True, train=True, hflip=0.0, max_unusable_fraction=1.0)
    m = ds.manifest
    assert {k: m[k] for k in ("images", "images_used", "annotations", "annotations_used", "missing_image",
                              "no_annotations", "unknown_image", "unknown_category", "box_degenerate",
                              "out_of_image", "box_clipped", "polygon_too_short", "no_polygon_left", "crowd")} == {
        "images": 5, "images_used": 3, "annotations": 11, "annotations_used": 4, "missing_image": 1,
        "no_annotations": 1, "unknown_image": 1, "unknown_category": 1, "box_degenerate": 1,
        "out_of_image": 1, "box_clipped": 1, "polygon_too_short": 2, "no_polygon_left": 1, "crowd": 1}
    by_file = {ds.items[i]["file"]: ds[i] for i in range(len(ds))}
    assert set(by_file) == {"good.jpg", "gray.jpg", "cmyk.jpg"}  # empty_anns skipped in training
    for image, target in by_file.values():
        assert image.shape == (3, 60, 80) and len(target["boxes"]) == len(target["masks"]) >= 1
    assert by_file["good.jpg"][1]["boxes"].tolist() == [[10, 10, 30, 30], [70, 40, 80, 60]]
    assert by_file["gray.jpg"][1]["labels"].tolist() == [79]  # category 90: toothbrush
    gray = by_file["gray.jpg"][0]
    assert torch.equal(gray[0], gray[1])  # grayscale widened to RGB
    assert by_file["cmyk.jpg"][1]["labels"].tolist() == [1]  # crowd left out

    val = CocoDetection(tmp_path, "train", masks=False, train=False, max_unusable_fraction=1.0)
    assert val.manifest["images_used"] == 4  # the evaluator needs every image with a file

    with pytest.raises(TransferDataError, match=r"instances_train2017\.json.*missing\.jpg"):
        CocoDetection(tmp_path, "train", masks=True, train=True)


def test_coco_unreadable_image_fails_naming_the_file(tmp_path):
    awkward_coco(tmp_path, "train")
    (tmp_path / "train2017" / "good.jpg").write_bytes(b"<html>not a jpeg</html>")
    ds = CocoDetection(tmp_path, "train", masks=False, train=True, max_unusable_fraction=1.0)
    with pytest.raises(TransferDataError, match="good.jpg"):
        ds[[it["file"] for it in ds.items].index("good.jpg")]


# --- results and scoring --------------------------------------------------------------------------


def test_ground_truth_fed_back_scores_100_and_no_results_score_0(coco_root):
    ds = CocoDetection(coco_root, "val", masks=True, train=False)
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        # Mask R-CNN's labels: 1..80 with 0 for the background (label_offset 1)
        outputs.append({"boxes": t["boxes"], "scores": torch.linspace(1, 0.5, n), "labels": t["labels"] + 1,
                        "masks": t["masks"][:, None].float() * 0.9})
        ids.append(t["image_id"])
    results = coco_results(outputs, ids, masks=True, label_offset=1)
    assert {r["category_id"] for r in results} <= {c["id"] for c in COCO_CATEGORIES[:4]}
    json.dumps(results)  # RLE counts are str
    scores = evaluate(ds.ann_file, results, ["bbox", "segm"])
    assert scores["ap_box"] == scores["ap50_box"] == scores["ap_mask"] == scores["ap75_mask"] == 100.0
    assert all(v == pytest.approx(100.0) or v == -1.0 for v in scores.values()), scores  # COCOeval sums floats
    empty = evaluate(ds.ann_file, [], ["bbox", "segm"])
    assert set(empty) == set(scores) and set(empty.values()) == {0.0}


def test_evaluate_is_quiet(coco_root, capsys):
    evaluate(coco_root / "annotations" / "instances_val2017.json", [], ["bbox"])
    evaluate(coco_root / "annotations" / "instances_val2017.json",
             [{"image_id": 1_000_001, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}], ["bbox"])
    assert capsys.readouterr().out == ""


# --- ADE20K dataset -------------------------------------------------------------------------------


def test_ade_train_and_val_samples(ade_root):
    ds = ADE20K(ade_root, "training", train=True, recipe=RECIPE, mean=MEAN, std=STD, seed=1)
    image, label = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and label.shape == (64, 64)
    assert label.dtype == torch.int64 and set(label.unique().tolist()) <= set(range(150)) | {IGNORE}
    again = ADE20K(ade_root, "training", train=True, recipe=RECIPE, mean=MEAN, std=STD, seed=1)
    assert torch.equal(again[0][0], image) and torch.equal(again[0][1], label)  # (seed, epoch, index)
    again.set_epoch(1)
    assert not torch.equal(again[0][0], image)

    val = ADE20K(ade_root, "validation", train=False, recipe=RECIPE, mean=MEAN, std=STD)
    vi, vl = val[0]
    raw = np.asarray(Image.open(val.pairs[0][1]))
    assert vl.shape == raw.shape and min(vi.shape[1:]) == 64  # short side to scale's 64, label at full size
    assert torch.equal(vl, torch.from_numpy(np.where(raw == 0, 255, raw.astype(np.int64) - 1)))


def test_ade_crop_respects_cat_max_ratio_and_pads():
    from pipeline.transfer.ade20k import random_crop_box, rescale_size

    assert rescale_size(683, 512, (2048, 512)) == (683, 512)
    assert rescale_size(300, 200, (2048, 512)) == (768, 512)
    label = np.zeros((40, 40), np.uint8)
    label[:, 30:] = 1  # a crop of 20 holds class 1 only when it starts at x >= 20
    rng = np.random.default_rng(0)
    for _ in range(20):
        y1, y2, x1, x2 = random_crop_box(label, 20, 0.75, rng)
        values, counts = np.unique(label[y1:y2, x1:x2], return_counts=True)
        assert len(values) == 2 and counts.max() / counts.sum() < 0.75
    assert random_crop_box(label, 64, 0.75, rng) == (0, 40, 0, 40)  # smaller image: the whole of it


def awkward_ade(root: Path) -> None:
    for d in ("images/training", "annotations/training"):
        (root / d).mkdir(parents=True)
    rgb = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    mask = np.full((48, 64), 3, np.uint8)
    mask[:8] = 0
    over = mask.copy()
    over[10:12] = 200  # not an ADE class
    pairs = {"a": (rgb, mask), "over150": (rgb, over), "gray": (rgb.convert("L"), mask),
             "cmyk": (rgb.convert("CMYK"), mask), "mismatch": (rgb, mask[:40]), "lonely_image": (rgb, None),
             "lonely_mask": (None, mask)}
    for name, (img, m) in pairs.items():
        if img is not None:
            (root / "images/training" / f"{name}.jpg").write_bytes(_jpeg(img))
        if m is not None:
            Image.fromarray(m).save(root / "annotations/training" / f"{name}.png")


def test_ade_bad_input_is_ignored_skipped_and_counted(tmp_path):
    awkward_ade(tmp_path)
    ds = ADE20K(tmp_path, "training", train=False, recipe=RECIPE, mean=MEAN, std=STD, max_unusable_fraction=1.0)
    ds.scan_label_ids()
    m = ds.manifest
    assert {k: m[k] for k in ("files", "pairs", "image_without_mask", "mask_without_image", "size_mismatch",
                              "labels_over_150_files", "labels_over_150_pixels")} == {
        "files": 7, "pairs": 4, "image_without_mask": 1, "mask_without_image": 1, "size_mismatch": 1,
        "labels_over_150_files": 1, "labels_over_150_pixels": 2 * 64}
    names = [p[0].stem for p in ds.pairs]
    _, label = ds[names.index("over150")]
    assert set(label[10:12].unique().tolist()) == {IGNORE} and set(label[:8].unique().tolist()) == {IGNORE}
    assert set(label[20:].unique().tolist()) == {2}
    for name in ("gray", "cmyk"):
        image, _ = ds[names.index(name)]
        assert image.shape[0] == 3
    with pytest.raises(TransferDataError, match="lonely_image.jpg"):
        ADE20K(tmp_path, "training", train=True, recipe=RECIPE, mean=MEAN, std=STD)


# --- mIoU -----------------------------------------------------------------------------------------


def test_miou_is_mmsegs_nanmean_with_ignored_pixels_left_out():
    # Class 2 is predicted only where the label is ignored: absent from the mean (mmseg's nanmean).
    # Counting the ignored pixel's prediction would give class 2 an IoU of 0 and mIoU 33.3.
    m = MIoU(num_classes=3)
    m.update(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 0, 1, IGNORE]]))
    r = m.compute()
    # class 0: 1 / (1 + 2 - 1); class 1: 1 / (2 + 1 - 1)
    assert r["miou"] == pytest.approx(50.0) and r["acc"] == pytest.approx(200 / 3)
    assert r["per_class_iou"][:2] == pytest.approx([50.0, 50.0]) and math.isnan(r["per_class_iou"][2])
    # A class predicted where the label says otherwise has IoU 0 and counts in the mean.
    m = MIoU(num_classes=3)
    m.update(torch.tensor([[0, 2, 1, 2]]), torch.tensor([[0, 0, 1, IGNORE]]))
    r = m.compute()
    assert r["per_class_iou"] == pytest.approx([50.0, 100.0, 0.0]) and r["miou"] == pytest.approx(50.0)


# --- the stage ------------------------------------------------------------------------------------


def _params(tmp_path: Path, profile: str = "builtin", **transfer) -> Path:
    raw = yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text())
    raw["transfer"]["builtin"]["coco"] = COCO_CFG.model_dump(mode="json") | {"train_images": 4, "val_images": 2}
    raw["transfer"]["builtin"]["ade20k"] = ADE_CFG.model_dump(mode="json") | {"train_images": 3, "val_images": 2}
    raw["transfer"].update(transfer)
    raw["profile"] = profile
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_prepare_transfer_builtin_twice_gives_the_same_files(tmp_path):
    from stages.prepare_transfer import main

    params = _params(tmp_path)
    for task in ("coco", "ade20k"):
        out = tmp_path / task
        args = [task, "--params", str(params), "--out", str(out), "--metrics", str(tmp_path / f"{task}.json"),
                "--workers", "1", "--no-mlflow"]
        assert main(args) == 0
        first = digest(out) | {"metrics": hashlib.sha1((tmp_path / f"{task}.json").read_bytes()).hexdigest()}
        assert main(args) == 0
        assert digest(out) | {"metrics": hashlib.sha1((tmp_path / f"{task}.json").read_bytes()).hexdigest()} == first
        assert json.loads((out / "source.json").read_text()) == {"kind": "builtin", "root": str(out / "builtin")}
        manifest = json.loads((out / "manifest.json").read_text())
        splits = ("train", "val") if task == "coco" else ("training", "validation")
        assert sorted(manifest) == sorted(splits) and all("examples" in manifest[s] for s in splits)
    assert json.loads((tmp_path / "coco.json").read_text())["images_used_train"] == 4


def test_prepare_transfer_paths_and_errors(tmp_path, coco_root, capsys):
    from stages.prepare_transfer import main

    out = tmp_path / "coco_out"
    assert main(["coco", "--params", str(_params(tmp_path, coco=str(coco_root))), "--out", str(out),
                 "--no-mlflow"]) == 0
    assert json.loads((out / "source.json").read_text()) == {"kind": "path", "root": str(coco_root)}

    assert main(["coco", "--params", str(_params(tmp_path, profile="paper")), "--out", str(out), "--no-mlflow"]) == 2
    assert "transfer.coco" in capsys.readouterr().err
    assert main(["ade20k", "--params", str(_params(tmp_path, ade20k=str(tmp_path))), "--out", str(out),
                 "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: transfer.ade20k") and "images/training/" in err
