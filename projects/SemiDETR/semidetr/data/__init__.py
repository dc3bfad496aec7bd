"""Data: data set registration, views (weak/strong/labeled) and loaders."""
