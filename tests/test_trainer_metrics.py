"""Data-quality counters reach the training metrics where the README says they are logged
(`data/skipped_unreadable`, `data/skipped_size_mismatch`), through a real data loader and mapper."""
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn

from semidetr.config import add_semidetr_config
from semidetr.data.build import build_labeled_train_loader
from semidetr.data.datasets.catalog import register_dataset, unregister_dataset
from semidetr.engine.train_loop import DetrTrainer


class _MeanModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, batch):
        return {"loss_mean": self.weight * sum(x["image"].float().mean() for x in batch) / 255.0}


def test_unreadable_and_mismatched_images_are_counted_in_the_training_metrics(tmp_path):
    rng = np.random.default_rng(0)
    dicts = []
    for image_id in range(4):
        path = tmp_path / f"image_{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
        dicts.append({"file_name": str(path), "image_id": image_id, "width": 40, "height": 30,
                      "annotations": [{"bbox": [2.0, 3.0, 20.0, 15.0], "bbox_mode": BoxMode.XYXY_ABS,
                                       "category_id": 0, "iscrowd": 0}]})
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    dicts.append({**dicts[0], "file_name": str(corrupt), "image_id": 4})
    dicts.append({**dicts[1], "image_id": 5, "width": 80, "height": 20})  # other aspect ratio: skipped
    name = f"metrics_test_{tmp_path.name}"
    register_dataset(name, lambda: [dict(d) for d in dicts], signature=("metrics_test", str(tmp_path)),
                     metadata={"thing_classes": ["thing"]})
    try:
        cfg = get_cfg()
        add_semidetr_config(cfg)
        cfg.DATASETS.TRAIN = (name,)
        cfg.INPUT.MIN_SIZE_TRAIN = (24, 32)
        cfg.INPUT.MAX_SIZE_TRAIN = 64
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
        cfg.SOLVER.IMS_PER_BATCH = 3
        cfg.SEED = 3
        model = _MeanModel()
        trainer = DetrTrainer(model, build_labeled_train_loader(cfg), torch.optim.SGD(model.parameters(), lr=0.1))
        with EventStorage(0) as storage:
            for iteration in range(DetrTrainer.DATA_METRICS_PERIOD):
                trainer.iter = storage.iter = iteration
                trainer.run_step()
                storage.step()
        # Counted at the end of each DATA_METRICS_PERIOD, summed over processes (here one).
        last = DetrTrainer.DATA_METRICS_PERIOD - 1
        unreadable = storage.history("data/skipped_unreadable").values()
        mismatch = storage.history("data/skipped_size_mismatch").values()
        assert [it for _, it in unreadable] == [last] and [it for _, it in mismatch] == [last]
        # 20 batches of 3 out of 6 images: each bad image is drawn (and skipped) several times.
        assert unreadable[0][0] >= 3 and mismatch[0][0] >= 3
    finally:
        unregister_dataset(name)
