"""Widget-free logic of the plugin: parameters, backend client and launcher, layers, settings."""
