"""Teacher-student machinery and Semi-DETR's components.

    pseudo_labels.py   teacher predictions -> pseudo labels of the strong view (score filter, weak->strong)
    ema.py             the EMA teacher update
    monitoring.py      pseudo-label / CPM metrics (hits at IoU 0.5 against the loaded ground truth, counts)
"""
