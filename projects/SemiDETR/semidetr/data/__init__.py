"""Data: the data sets (``datasets/``: registration, loading, validation), the views (labeled / weak /
strong, ``transforms.py``), the mappers and the resumable training loaders."""
