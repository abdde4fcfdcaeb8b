"""kdbench's distillation methods, one file each. ``bench.plugins.load_methods`` imports them."""
