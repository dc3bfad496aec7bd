"""Teacher-student machinery and Semi-DETR's components.

    pseudo_labels.py   teacher predictions -> pseudo labels of the strong view (score filter, weak->strong)
    ema.py             the EMA teacher update
"""
