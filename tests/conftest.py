"""Shared pytest set-up: CPU only, deterministic, few threads (the CI machine has 2 cores)."""
import os
import warnings

import pytest
import torch

torch.set_num_threads(2)
# detectron2's import-time uses of torch.jit.script are deprecated in recent torch: not ours to fix.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BCCD_ROOT = os.path.join(os.path.dirname(REPO_ROOT), "shared", "datasets", "BCCD", "BCCD")


def bccd_root_or_skip() -> str:
    """The real BCCD data set's root; the calling test is skipped where it is absent (it is not shipped)."""
    from semidetr.data.datasets.bccd import find_bccd_root
    from semidetr.data.datasets.validation import DatasetError

    try:
        return find_bccd_root()
    except DatasetError:
        pytest.skip("BCCD is not available at $DETECTRON2_DATASETS/BCCD or ../shared/datasets/BCCD/BCCD")


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore:.*torch.jit.script.*:FutureWarning")
    # `pytest -m cuda` selects the GPU tests (tests/test_cuda.py; skipped without a GPU, run by tools/gpu_check.sh).
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


@pytest.fixture
def unique_name():
    """Makes unique data-set names; unregisters them (and their splits) after the test."""
    import uuid

    from detectron2.data import DatasetCatalog

    from semidetr.data.datasets.catalog import unregister_dataset

    created = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        created.append(name)
        return name

    yield make
    for registered in list(DatasetCatalog.keys()):
        if any(registered.startswith(name) for name in created):
            unregister_dataset(registered)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


MICRO_CLASSES = ("circle", "square", "triangle")


@pytest.fixture(scope="session")
def micro_shapes(tmp_path_factory):
    """A micro synthetic data set (COCO json + images) for end-to-end runs: 24 train, 8 val images.

    Returns DATASETS.REGISTER specs, so subprocesses (launch workers) register the same sets."""
    from semidetr.data.datasets.synthetic import ShapesConfig, prepare_shapes_split

    root = str(tmp_path_factory.mktemp("micro_shapes"))
    config = ShapesConfig(classes=MICRO_CLASSES, image_size=(96, 128), objects_per_image=(1, 4),
                          object_size=(12.0, 0.5), distractors=(0, 3))
    specs = []
    for split, count, seed in (("train", 24, 1), ("val", 8, 2)):
        json_file, image_root = prepare_shapes_split(split, count, seed, config, root=root)
        specs.append(f"micro_{split}=coco:{json_file}:{image_root}")
    return specs


# Overrides shrinking the CPU quick configs' model and images to a seconds-long run.
MICRO_MODEL_ARGS = [
    "MODEL.DETR.HIDDEN_DIM", "64", "MODEL.DETR.NHEADS", "4", "MODEL.DETR.DIM_FEEDFORWARD", "128",
    "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "2", "MODEL.DETR.NUM_QUERIES", "30",
    "MODEL.DETR.NUM_SELECT", "30", "MODEL.DETR.DN_NUMBER", "10",
    "INPUT.MIN_SIZE_TRAIN", "(96, 128)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "112",
    "INPUT.MAX_SIZE_TEST", "160", "DATALOADER.NUM_WORKERS", "0", "SEED", "7",
]


def micro_config_args(specs, output_dir, *extra):
    """Command-line overrides turning the CPU quick config into a seconds-long run on the micro data."""
    return [
        "DATASETS.REGISTER", str(list(specs)),
        "DATASETS.TRAIN", "('micro_train',)", "DATASETS.TEST", "('micro_val',)",
        *MICRO_MODEL_ARGS, "OUTPUT_DIR", str(output_dir),
        *extra,
    ]
